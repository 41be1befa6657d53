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

from gateway.errors import GatewayError
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

    On a replica that does not own the ramp (``replica_id`` is not the rule's ``owner``) it
    only watches: the owner changes the route at least every ``interval_s`` plus half the
    grace (a step, or a hold saying why it waits), so a route silent for ``interval_s`` plus
    ``takeover_grace_s`` has lost its owner, and this replica proposes itself as the owner on
    the route's revision; the revision check lets exactly one proposer win.
    """

    def __init__(
        self,
        endpoint: str,
        route_of: RouteOf,
        stats: VariantStats,
        change: ChangeFn,
        version_of: VersionOf | None = None,
        check_interval_s: float = 0.5,
        *,
        replica_id: str | None = None,
        takeover_grace_s: float = 10.0,
        last_step: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self._replica_id = replica_id
        self._grace_s = takeover_grace_s
        self._clock = clock
        self._version_of = version_of
        self._route_of = route_of
        self._stats = stats
        self._change = change
        self._check_interval_s = check_interval_s
        self._task: asyncio.Task[None] | None = None
        # when the route last changed here (the owner's last sign of life), and when the ramp
        # last moved (kept across changes that do not move it, such as a hold or a takeover)
        self._heard = clock()
        self._last_step = self._heard if last_step is None else last_step
        self._client: httpx.AsyncClient | None = None  # for a rule with a quality gate

    @property
    def last_step(self) -> float:
        """When the ramp last moved, on this replica's monotonic clock."""
        return self._last_step

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
        if rule.owner is not None and self._replica_id not in (None, rule.owner):
            return await self._watch(route, rule)
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
            rolled_back = _with_state(rule, "rolled_back", time.time())
            new = route.with_weights(weights, canary=rolled_back.model_dump())
            log.warning("canary %s: rolling back %s: %s", self.endpoint, rule.variant, breach)
            await self._change(new, "canary", f"rolled back {rule.variant}: {breach}")
            return True
        step = int(rule.state.removeprefix("step-"))
        if self._clock() - self._last_step < rule.interval_s:
            return False
        canary = self._stats.summary(self.endpoint, rule.variant, rule.window_s)
        if canary.requests < rule.min_requests:
            # not enough evidence to go further yet
            seen = f"{canary.requests} of {rule.min_requests} requests"
            return await self._hold(route, rule, f"{seen} in the last {rule.window_s:g} s")
        last = step + 1 >= len(rule.steps)
        if (last or rule.steps[step + 1] >= 100) and _quality_unproven(rule, quality):
            # not shown to be within the margin of the baseline yet: promotion waits, and so
            # does all traffic
            return await self._hold(route, rule, "no quality verdict within the margin yet")
        if last:
            new = route.model_copy(update={"canary": _with_state(rule, "promoted", time.time())})
            await self._change(new, "canary", f"promoted {rule.variant}")
            return True
        await self._step(route, rule, step + 1, f"ramped {rule.variant}")
        return True

    async def _hold(self, route: Route, rule: CanaryRule, held: str) -> bool:
        """Say why the due step waits, when the route has been silent long enough that the
        other replicas would otherwise take the ramp for ownerless (their clocks start when
        they apply a change, a little after this one's: half the grace is the margin)."""
        if self._clock() - self._heard < rule.interval_s + self._grace_s / 2:
            return False
        variant = route.variant(rule.variant)
        percent = variant.weight if variant is not None else 0
        new = route.model_copy(update={"canary": rule.model_copy(update={"held": held})})
        await self._change(new, "canary", f"held {rule.variant} at {percent}%: {held}")
        return True

    async def _watch(self, route: Route, rule: CanaryRule) -> bool:
        """On a replica that does not own the ramp: take it over once its owner has been
        silent past the step interval and the grace."""
        silent = self._clock() - self._heard
        # the owner's check before it holds may wait for the monitor's verdict that long
        asking_s = rule.quality.timeout_s if rule.quality is not None else 0.0
        if silent < rule.interval_s + self._grace_s + asking_s:
            return False
        reason = f"took over the canary from {rule.owner}: no step or hold for {silent:.0f} s"
        owned = rule.model_copy(update={"owner": self._replica_id, "held": None})
        try:
            await self._change(route.model_copy(update={"canary": owned}), "canary", reason)
        except GatewayError as exc:  # another replica's change came first: it is the owner
            log.info("canary %s: not taken over: %s", self.endpoint, exc)
            return False
        log.warning("canary %s: %s", self.endpoint, reason)
        return True

    async def _step(self, route: Route, rule: CanaryRule, index: int, reason: str) -> None:
        percent = rule.steps[index]
        new = route.with_weights(
            _weights(route, rule, percent),
            canary=_with_state(rule, f"step-{index}", time.time()).model_dump(),
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


def _with_state(rule: CanaryRule, state: str, now: float) -> CanaryRule:
    """The rule moved to ``state`` at Unix time ``now``, no longer held."""
    return rule.model_copy(update={"state": state, "stepped_at": now, "held": None})
