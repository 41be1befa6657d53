"""The settings of a rollout: where the gateway's admin API is, and the canary rule it sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from registry_client import InvalidReferenceError, ModelRef

__all__ = ["RolloutSettings"]


@dataclass(frozen=True)
class RolloutSettings:
    """Where the gateway's admin API is, and how the canary ramps and is judged.

    ``steps``...``min_p99_increase_s`` are the gateway's canary rule (README, Traffic
    management); ``quality_monitor_url`` adds its quality gate (realized accuracy from the
    monitor's A/B verdict, within ``quality_margin`` of the champion). ``timeout_s`` bounds
    the whole rollout, ``swap_timeout_s`` the wait for the champion variant to load the new
    version after promotion (the gateway polls aliases every ``registry.poll_interval_s``).
    """

    admin_url: str
    admin_token: str = field(repr=False)
    steps: tuple[int, ...] = (5, 25, 50, 100)
    interval_s: float = 60.0
    window_s: float = 60.0
    min_requests: int = 50
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    min_p99_increase_s: float = 0.005
    quality_monitor_url: str | None = None
    quality_margin: float = 0.01
    timeout_s: float = 3600.0
    swap_timeout_s: float = 300.0
    poll_interval_s: float = 1.0
    request_timeout_s: float = 10.0
    champion_alias: str = "champion"
    candidate_alias: str = "candidate"
    candidate_variant: str = "candidate"

    def __post_init__(self) -> None:
        problems = []
        if not self.admin_url.startswith(("http://", "https://")):
            problems.append(f"admin_url {self.admin_url!r} must start with http:// or https://")
        if not self.admin_token:
            problems.append("admin_token is empty")
        steps = list(self.steps)
        if not steps or steps != sorted(steps) or any(not 0 < s <= 100 for s in steps):
            problems.append(f"steps {steps} must be increasing percentages in (0, 100]")
        for name in ("interval_s", "window_s", "timeout_s", "swap_timeout_s", "poll_interval_s",
                     "request_timeout_s", "max_p99_ratio"):  # fmt: skip
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        if self.min_requests < 1:
            problems.append("min_requests must be at least 1")
        if not 0 <= self.quality_margin <= 1:
            problems.append("quality_margin must be between 0 and 1")
        for name in ("champion_alias", "candidate_alias"):
            try:
                ModelRef.parse(f"model@{getattr(self, name)}")
            except InvalidReferenceError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise ValueError("rollout settings: " + "; ".join(problems))

    def canary_rule(self, baseline: str) -> dict[str, Any]:
        """The gateway's canary rule ramping the candidate variant against ``baseline``."""
        rule: dict[str, Any] = {
            "variant": self.candidate_variant,
            "baseline": baseline,
            "steps": list(self.steps),
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "min_requests": self.min_requests,
            "max_error_rate_increase": self.max_error_rate_increase,
            "max_p99_ratio": self.max_p99_ratio,
            "min_p99_increase_s": self.min_p99_increase_s,
        }
        if self.quality_monitor_url is not None:
            rule["quality"] = {"monitor_url": self.quality_monitor_url,
                               "margin": self.quality_margin}  # fmt: skip
        return rule
