"""Routes: which model variants serve an endpoint, in what shares, and what shadows them.

Traffic is split on a table of 10,000 buckets. A request's bucket is a hash of its routing key
(sticky: the same key always lands in the same bucket) or random when it has none. When weights
change, ``rebalance`` moves only as many buckets as the change requires, from the variants that
lost weight to those that gained it, so a key moves only if its variant had to give up share.
The table travels with the route (run-length encoded), so every replica routes identically.

Every change of a route raises its ``revision`` by one: the admin API's ETag, and what a change
on the control topic names as the state it was made from.

The models are strict (integer weights, booleans as booleans, no numbers as text) and bounded
(name lengths, variants and shadows per route, steps), since operators' JSON lands here.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from typing import Annotated

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictBool, model_validator

from registry_client import ModelRef
from registry_client.errors import InvalidReferenceError

__all__ = [
    "BUCKETS",
    "CanaryRule",
    "QualityGate",
    "Route",
    "ShadowSpec",
    "VariantSpec",
    "follow",
    "key_bucket",
    "rebalance",
]

BUCKETS = 10_000
MAX_VARIANTS = 16
MAX_SHADOWS = 8
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
Name = Annotated[str, Field(strict=True, pattern=_NAME, min_length=1, max_length=128)]
# A registry reference, "name@alias" or "name/version": ModelRef.parse bounds each part.
Ref = Annotated[str, Field(strict=True, min_length=1)]
Percent = Annotated[int, Field(strict=True, ge=0, le=100)]
Seconds = Annotated[float, Field(strict=True, gt=0)]
# A canary's step interval and window: a ramp set to wait longer than a week is a typo (or a
# way to make it never move), and a window past a week holds no more than its sample bound.
_WEEK_S = 7 * 24 * 3600.0
CanarySeconds = Annotated[float, Field(strict=True, gt=0, le=_WEEK_S)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ref(ref: str) -> str:
    try:
        ModelRef.parse(ref)
    except InvalidReferenceError as exc:
        raise ValueError(str(exc)) from exc
    return ref


class VariantSpec(_Frozen):
    """A model version (by registry reference) taking a share of an endpoint's traffic."""

    name: Name
    ref: Ref
    weight: Percent

    @model_validator(mode="after")
    def _ref(self) -> VariantSpec:
        _check_ref(self.ref)
        return self


class ShadowSpec(_Frozen):
    """A model that gets a copy of a sampled share of requests; its answers are only compared."""

    name: Name
    ref: Ref
    sample: float = Field(default=1.0, ge=0, le=1, strict=True)
    # Most of one core-second per second the shadow may use, so it cannot starve the primary.
    max_busy_fraction: float = Field(default=0.25, gt=0, le=1, strict=True)
    queue_size: int = Field(default=256, ge=1, le=65_536, strict=True)

    @model_validator(mode="after")
    def _ref(self) -> ShadowSpec:
        _check_ref(self.ref)
        return self


class QualityGate(_Frozen):
    """Gate a canary on the monitor's A/B verdict (``GET {monitor_url}/ab/{endpoint}``, on
    the metric the monitor compares: accuracy or the versions' primary metric): promote only
    when the challenger is not worse than the baseline by more than ``margin`` (in the metric's
    units: the lower bound of the gain's interval above -margin), roll back as soon as it is
    significantly worse."""

    monitor_url: str = Field(strict=True, pattern=r"^https?://", max_length=2048)
    margin: float = Field(default=0.01, ge=0, le=1, strict=True)
    timeout_s: Seconds = 2.0

    @model_validator(mode="after")
    def _url(self) -> QualityGate:
        # checked here: a URL httpx cannot parse failed each of the controller's checks before
        # its error-rate and latency bounds were read, so the ramp neither moved nor rolled back
        try:
            url = httpx.URL(self.monitor_url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"quality.monitor_url is not a URL: {exc}") from exc
        if not url.host or (url.port is not None and not 0 < url.port < 65_536):
            raise ValueError("quality.monitor_url needs a host (and a port from 1 to 65535)")
        return self


class CanaryRule(_Frozen):
    """Ramp ``variant`` through ``steps`` (percent) while it stays within bounds of ``baseline``."""

    variant: Name
    baseline: Name
    steps: list[Percent] = Field(
        default_factory=lambda: [5, 25, 50, 100], min_length=1, max_length=20
    )
    interval_s: CanarySeconds = 60.0
    window_s: CanarySeconds = 60.0
    min_requests: int = Field(default=50, ge=1, strict=True)
    # Bounds relative to the baseline over the window: error rate may exceed the baseline's by
    # at most this much (absolute), p99 latency may be at most this multiple of the baseline's.
    max_error_rate_increase: float = Field(default=0.01, ge=0, strict=True)
    max_p99_ratio: float = Field(default=1.5, gt=0, strict=True)
    # ... unless it is within this many seconds of the baseline's: at sub-millisecond latencies
    # scheduling noise alone moves a p99 by more than 1.5x, which must not roll a canary back.
    min_p99_increase_s: float = Field(default=0.005, ge=0, strict=True)
    # Optional: the A/B verdict on a realized metric that promotion waits for.
    quality: QualityGate | None = None
    # Where the ramp stands: "pending", "step-N" (N indexes steps), "promoted", "rolled_back".
    state: str = Field(default="pending", max_length=32)
    # The replica that drives the ramp (the one the operator asked, or one that took it over
    # when its owner went quiet); others follow its changes. None: every replica drives it.
    owner: str | None = Field(default=None, max_length=256)
    # Set by the owner, for operators to see a ramp's pace: when it last moved (start, step,
    # promotion, rollback; Unix time), and why it holds where it is when a step is due.
    stepped_at: float | None = Field(default=None, ge=0, strict=True)
    held: str | None = Field(default=None, max_length=512)

    @model_validator(mode="after")
    def _steps(self) -> CanaryRule:
        if any(not 0 < s <= 100 for s in self.steps) or self.steps != sorted(self.steps):
            raise ValueError("canary.steps must be increasing percentages in (0, 100]")
        if self.variant == self.baseline:
            raise ValueError("canary.variant and canary.baseline must differ")
        step = self.state.removeprefix("step-")
        if self.state not in ("pending", "promoted", "rolled_back") and not (
            self.state.startswith("step-")
            and step.isascii()
            and step.isdigit()
            and int(step) < len(self.steps)
        ):
            # the controller reads the step it is at from here: another value failed its every
            # check (logged, the ramp stuck) instead of being refused where it was written
            raise ValueError(
                f"canary.state must be 'pending', 'promoted', 'rolled_back' or 'step-N' with N "
                f"an index of canary.steps (0 to {len(self.steps) - 1}), not {self.state!r}"
            )
        return self


class Route(_Frozen):
    """An endpoint's variants (weights summing to 100), shadows and canary rule."""

    endpoint: Name
    variants: list[VariantSpec] = Field(min_length=1, max_length=MAX_VARIANTS)
    shadows: list[ShadowSpec] = Field(default_factory=list, max_length=MAX_SHADOWS)
    canary: CanaryRule | None = None
    allow_pinning: StrictBool = False
    # How many changes made this route since the config file's (0); set by the route store.
    revision: int = Field(default=0, ge=0)
    # Run-length bucket table: (first bucket, variant name) in bucket order; filled on creation.
    buckets: list[tuple[int, str]] = Field(default_factory=list)
    _starts: list[int] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Route:
        names = [v.name for v in self.variants]
        shadow_names = [s.name for s in self.shadows]
        if len(set(names)) != len(names) or len(set(shadow_names)) != len(shadow_names):
            raise ValueError(f"route {self.endpoint}: variant and shadow names must be unique")
        if set(names) & set(shadow_names):
            raise ValueError(f"route {self.endpoint}: a name cannot be both variant and shadow")
        total = sum(v.weight for v in self.variants)
        if abs(total - 100) > 1e-6:
            raise ValueError(f"route {self.endpoint}: variant weights sum to {total:g}, not 100")
        if self.canary is not None:
            for role in ("variant", "baseline"):
                if getattr(self.canary, role) not in names:
                    raise ValueError(
                        f"route {self.endpoint}: canary {role} {getattr(self.canary, role)!r} "
                        f"is not one of its variants {names}"
                    )
        if self.buckets:
            weighted = {v.name for v in self.variants if v.weight > 0}
            if {name for _, name in self.buckets} != weighted or self.buckets[0][0] != 0:
                raise ValueError(f"route {self.endpoint}: bucket table does not match weights")
        else:
            object.__setattr__(self, "buckets", _encode(rebalance([], self.variants)))
        self._starts = [start for start, _ in self.buckets]
        return self

    def variant(self, name: str) -> VariantSpec | None:
        """The variant of that name, or None."""
        return next((v for v in self.variants if v.name == name), None)

    def pick(self, bucket: int) -> str:
        """The variant that owns ``bucket``."""
        # pydantic resolves private attributes in a Python __getattr__; this is the hot path
        starts: list[int] = self.__pydantic_private__["_starts"]  # type: ignore[index]
        return self.buckets[bisect_right(starts, bucket) - 1][1]

    def with_weights(self, weights: dict[str, int], **changes: object) -> Route:
        """A copy with new weights (and other fields changed), its bucket table moved minimally."""
        unknown = set(weights) - {v.name for v in self.variants}
        if unknown:
            raise ValueError(f"route {self.endpoint} has no variants {sorted(unknown)}")
        data = self.model_dump()
        data.update(changes)
        data["variants"] = [
            {**v, "weight": weights.get(v["name"], v["weight"])} for v in data["variants"]
        ]
        data.pop("buckets")
        return follow(self, Route.model_validate(data))


def follow(previous: Route | None, route: Route) -> Route:
    """``route`` with its bucket table moved as little as possible from ``previous``'s."""
    if previous is None:
        return route
    table = rebalance(_decode(previous.buckets), route.variants)
    return Route.model_validate({**route.model_dump(), "buckets": _encode(table)})


def key_bucket(key: str | None) -> int:
    """The bucket of a routing key (stable across processes and restarts), random without one."""
    if key is None:
        return random.randrange(BUCKETS)
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def _quotas(variants: list[VariantSpec]) -> dict[str, int]:
    """Buckets per variant by largest remainder; ties broken by name, so it is deterministic."""
    exact = {v.name: v.weight * BUCKETS / 100 for v in variants}
    quotas = {name: int(share) for name, share in exact.items()}
    left = BUCKETS - sum(quotas.values())
    by_remainder = sorted(exact, key=lambda n: (-(exact[n] - quotas[n]), n))
    for name in by_remainder[:left]:
        quotas[name] += 1
    return quotas


def rebalance(table: list[str], variants: list[VariantSpec]) -> list[str]:
    """A bucket table for the new weights that keeps every bucket it can where it was."""
    quotas = _quotas(variants)
    if len(table) != BUCKETS:
        table = [""] * BUCKETS
    held = dict.fromkeys(quotas, 0)
    result = list(table)
    free: list[int] = []
    for bucket, owner in enumerate(table):
        if owner in quotas and held[owner] < quotas[owner]:
            held[owner] += 1
        else:
            free.append(bucket)
    free.reverse()
    for name in sorted(quotas):
        for _ in range(quotas[name] - held[name]):
            result[free.pop()] = name
    return result


def _encode(table: list[str]) -> list[tuple[int, str]]:
    runs: list[tuple[int, str]] = []
    for bucket, owner in enumerate(table):
        if not runs or runs[-1][1] != owner:
            runs.append((bucket, owner))
    return runs


def _decode(runs: list[tuple[int, str]]) -> list[str]:
    table: list[str] = []
    for i, (start, owner) in enumerate(runs):
        end = runs[i + 1][0] if i + 1 < len(runs) else BUCKETS
        table.extend([owner] * (end - start))
    return table
