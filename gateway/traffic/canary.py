"""Canary ramps with automatic rollback, judged on sliding windows of each variant's outcomes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from gateway.traffic.routes import CanaryRule, Route
from gateway.traffic.verdicts import Comparison, fetch_comparison

__all__ = ["CanaryController", "VariantStats", "WindowSummary"]

log = logging.getLogger(__name__)

_MAX_SAMPLES = 100_000  # per variant; the window is also bounded in time


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """A variant's requests over the last window."""

    requests: int
    error_rate: float
    p99_s: float
    # refused as invalid by the variant's version (400): callers' mistakes fall on every variant
    # alike, so a canary's rate above the baseline's is its version refusing what the other takes
    invalid_rate: float = 0.0


class VariantStats:
    """Recent (time, latency, failed, invalid) samples per (endpoint, variant), bounded in
    count."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._samples: dict[tuple[str, str], deque[tuple[float, float, bool, bool]]] = {}
        self._clock = clock

    def record(
        self, endpoint: str, variant: str, latency_s: float, failed: bool, invalid: bool = False
    ) -> None:
        """One answered request; ``failed``: the gateway or the model failed, not the caller;
        ``invalid``: the variant's version refused the request as invalid (400)."""
        key = (endpoint, variant)
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = deque(maxlen=_MAX_SAMPLES)
        samples.append((self._clock(), latency_s, failed, invalid))

    def forget(self, endpoint: str, variant: str) -> None:
        """Drop a variant's samples (a ramp starts: it is judged on its own requests only)."""
        self._samples.pop((endpoint, variant), None)

    def summary(self, endpoint: str, variant: str, window_s: float) -> WindowSummary:
        """Requests, error rate and p99 latency over the last ``window_s`` seconds."""
        samples = self._samples.get((endpoint, variant), deque())
        since = self._clock() - window_s
        while samples and samples[0][0] < since:
            samples.popleft()
        if not samples:
            return WindowSummary(0, 0.0, 0.0)
        latencies = np.fromiter((s[1] for s in samples), dtype=np.float64, count=len(samples))
        errors = sum(1 for s in samples if s[2])
        invalid = sum(1 for s in samples if s[3])
        return WindowSummary(
            len(samples),
            errors / len(samples),
            float(np.percentile(latencies, 99)),
            invalid / len(samples),
        )


ChangeFn = Callable[[Route, str, str], Awaitable[Any]]
RouteOf = Callable[[str], Route | None]
VersionOf = Callable[[str, str], str | None]  # (endpoint, variant) -> version served


class CanaryController:
    """Drives one endpoint's canary: ramps every ``interval_s``, rolls back at once on a breach.

    It reads the route in force (``route_of``) and the variants' outcomes (``stats``), and
    changes the route only through ``change``: nothing else of the traffic state.
    """

    def __init__(
        self,
        endpoint: str,
        route_of: RouteOf,
        stats: VariantStats,
        change: ChangeFn,
        version_of: VersionOf | None = None,
        check_interval_s: float = 0.5,
    ) -> None:
        self.endpoint = endpoint
        self._version_of = version_of
        self._route_of = route_of
        self._stats = stats
        self._change = change
        self._check_interval_s = check_interval_s
        self._task: asyncio.Task[None] | None = None
        self._last_step = time.monotonic()
        self._client: httpx.AsyncClient | None = None  # for a rule with a quality gate

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"canary:{self.endpoint}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                if await self._tick():
                    return  # the change re-applies the route, which starts a fresh controller
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("canary %s: evaluation failed", self.endpoint)
            await asyncio.sleep(self._check_interval_s)

    async def _tick(self) -> bool:
        route = self._route_of(self.endpoint)
        rule = route.canary if route is not None else None
        if route is None or rule is None:
            return True
        if rule.state == "pending":
            # what the variant answered before (an earlier ramp of it, rolled back within the
            # window) says nothing of this one, and would roll it back before it served
            self._stats.forget(self.endpoint, rule.variant)
            await self._step(route, rule, 0, "canary started")
            return True
        quality = await self._quality(rule)
        breach = self._breach(rule) or _quality_breach(quality)
        if breach is not None:
            weights = _weights(route, rule, 0)
            new = route.with_weights(weights, canary=_with_state(rule, "rolled_back"))
            log.warning("canary %s: rolling back %s: %s", self.endpoint, rule.variant, breach)
            await self._change(new, "canary", f"rolled back {rule.variant}: {breach}")
            return True
        step = int(rule.state.removeprefix("step-"))
        if time.monotonic() - self._last_step < rule.interval_s:
            return False
        canary = self._stats.summary(self.endpoint, rule.variant, rule.window_s)
        if canary.requests < rule.min_requests:
            return False  # not enough evidence to go further yet
        if step + 1 >= len(rule.steps):
            if _quality_unproven(rule, quality):
                return False  # not shown to be within the margin of the baseline yet
            new = route.model_copy(update={"canary": rule.model_copy(update={"state": "promoted"})})
            await self._change(new, "canary", f"promoted {rule.variant}")
            return True
        if rule.steps[step + 1] >= 100 and _quality_unproven(rule, quality):
            return False  # all traffic waits for the verdict that promotion waits for
        await self._step(route, rule, step + 1, f"ramped {rule.variant}")
        return True

    async def _step(self, route: Route, rule: CanaryRule, index: int, reason: str) -> None:
        percent = rule.steps[index]
        new = route.with_weights(
            _weights(route, rule, percent), canary=_with_state(rule, f"step-{index}")
        )
        await self._change(new, "canary", f"{reason} to {percent}%")

    async def _quality(self, rule: CanaryRule) -> Comparison | None:
        """The monitor's A/B comparison of the two variants, when the rule gates on it."""
        if rule.quality is None:
            return None
        versions = {
            name: self._version_of(self.endpoint, name) if self._version_of else None
            for name in (rule.baseline, rule.variant)
        }
        if None in versions.values():
            return None  # a variant is still loading
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=rule.quality.timeout_s)
        return await fetch_comparison(
            self._client,
            rule.quality.monitor_url,
            self.endpoint,
            (rule.baseline, versions[rule.baseline] or ""),
            (rule.variant, versions[rule.variant] or ""),
        )

    def _breach(self, rule: CanaryRule) -> str | None:
        stats = self._stats
        canary = stats.summary(self.endpoint, rule.variant, rule.window_s)
        baseline = stats.summary(self.endpoint, rule.baseline, rule.window_s)
        if canary.requests < rule.min_requests:
            return None
        if canary.error_rate > baseline.error_rate + rule.max_error_rate_increase:
            return (
                f"error rate {canary.error_rate:.3f} vs baseline {baseline.error_rate:.3f} "
                f"(allowed +{rule.max_error_rate_increase})"
            )
        if (
            baseline.requests >= rule.min_requests
            and canary.invalid_rate > baseline.invalid_rate + rule.max_error_rate_increase
        ):
            # e.g. a version whose inputs or features differ: every request made for the
            # baseline is a 400 from it, which no error rate counts (callers' mistakes)
            return (
                f"invalid-request rate {canary.invalid_rate:.3f} vs baseline "
                f"{baseline.invalid_rate:.3f} (allowed +{rule.max_error_rate_increase}): its "
                "version refuses requests the baseline serves"
            )
        if (
            baseline.requests >= rule.min_requests
            and canary.p99_s > baseline.p99_s * rule.max_p99_ratio
            and canary.p99_s - baseline.p99_s > rule.min_p99_increase_s
        ):
            return (
                f"p99 {canary.p99_s * 1000:.1f} ms vs baseline {baseline.p99_s * 1000:.1f} ms "
                f"(allowed x{rule.max_p99_ratio} or +{rule.min_p99_increase_s * 1000:g} ms)"
            )
        return None


def _quality_unproven(rule: CanaryRule, quality: Comparison | None) -> bool:
    """Whether the rule gates on quality and the challenger is not yet shown to be within its
    margin of the baseline (no verdict counts as not shown)."""
    if rule.quality is None:
        return False
    return quality is None or quality.low <= -rule.quality.margin


def _quality_breach(quality: Comparison | None) -> str | None:
    if quality is None or not quality.worse:
        return None
    return (
        f"{quality.metric} gain {quality.difference:+.3f} vs baseline, interval "
        f"[{quality.low:+.3f}, {quality.high:+.3f}] over {quality.labels} labels: "
        "significantly worse"
    )


def _weights(route: Route, rule: CanaryRule, percent: int) -> dict[str, int]:
    """The canary at ``percent``; the baseline absorbs the difference, others keep theirs."""
    canary = route.variant(rule.variant)
    baseline = route.variant(rule.baseline)
    assert canary is not None
    assert baseline is not None
    spare = canary.weight + baseline.weight
    percent = min(percent, spare)
    return {rule.variant: percent, rule.baseline: spare - percent}


def _with_state(rule: CanaryRule, state: str) -> dict[str, Any]:
    return rule.model_copy(update={"state": state}).model_dump()
