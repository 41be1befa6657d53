"""Admission to one endpoint: an in-flight limit (adaptive or fixed), the queue-delay target,
per-client buckets, and refusals counted by reason.

The queue delay of a request is the time from its first byte seen by the server to the start
of its batch (pipelined requests waiting for their turn on a connection included). The gate
sees it through the batcher's ``queue_wait`` and keeps, per window of ``interval_s``:

- the mean: above the target, with the limit in use, the adaptive limit shrinks by
  ``backoff_ratio``; at or below it, in a window where the limit refused requests, it grows
  by the square root of itself (additive increase, faster from a high limit);
- the minimum: when even the luckiest request of a window waited longer than the target,
  the queue is standing, not a burst (CoDel's test). Then, for the next window, new requests
  are refused (``queue_delay``) beyond ``backoff_ratio`` of the most that were in flight in
  this one, whatever the mode: the queue drains instead of growing. (Refusing every new
  request instead would idle the model between windows; on a machine where the server loses
  its CPU now and then, waits stand above any target through no fault of the load.)

The target is ``queue_delay_target_s`` plus the mean time one batch of the model runs: a
request may always wait for the batch ahead of it.

A refusal costs a few comparisons and a counter; the error it returns is built once.
"""

from __future__ import annotations

import math

from gateway.admission.clients import ClientBuckets
from gateway.admission.settings import LimitSettings
from gateway.errors import GatewayError, OverloadedError, RateLimitedError

__all__ = ["REASONS", "Gate", "InFlightTotal"]

# Why a request was refused: its endpoint's in-flight limit, the process's, the endpoint's
# standing queue, or its caller's own rate.
REASONS = ("endpoint_limit", "total_limit", "queue_delay", "client_rate")
_RUN_TIME_WEIGHT = 0.1  # of each batch's run time in the moving average


class InFlightTotal:
    """Requests in flight over all endpoints, and their fixed bound."""

    __slots__ = ("in_flight", "limit")

    def __init__(self, limit: int) -> None:
        self.in_flight = 0
        self.limit = limit


class Gate:
    """Admits or refuses the requests of one endpoint; ``release`` once per admitted request."""

    def __init__(
        self,
        endpoint: str,
        limits: LimitSettings,
        total: InFlightTotal,
        *,
        interval_s: float,
        backoff_ratio: float,
        retry_after_s: float,
        max_clients: int,
    ) -> None:
        self.endpoint = endpoint
        self.in_flight = 0
        self._adaptive = limits.mode == "adaptive"
        self.limit = limits.start_in_flight if self._adaptive else limits.max_in_flight
        self._min_limit = limits.min_in_flight
        self._max_limit = limits.max_in_flight
        self._target_s = limits.queue_delay_target_s
        self._total = total
        self._interval_s = interval_s
        self._backoff = backoff_ratio
        self._buckets = (
            ClientBuckets(limits.client_rate_per_s, limits.client_burst, max_clients)
            if limits.client_rate_per_s is not None
            else None
        )
        self.limits_clients = self._buckets is not None  # else the caller's key is not needed
        self.refusals = dict.fromkeys(REASONS, 0)
        self.last_shed = -math.inf  # when a request was last refused for load (not its rate)
        self.queue_delay_s = 0.0  # the last window's mean
        self.standing = False  # the last window's queue stood above the target
        self.cap = self.limit  # the limit in force: lower while the queue stands
        self._run_s = 0.0
        self._window_end = -math.inf
        self._sum = 0.0
        self._count = 0
        self._min = math.inf
        self._peak = 0
        self._saturated = False
        overloaded = f"model {endpoint} is overloaded"
        client_retry_s = 1.0 / limits.client_rate_per_s if limits.client_rate_per_s else 1.0
        self._errors: dict[str, GatewayError] = {
            "endpoint_limit": OverloadedError(
                f"{overloaded}: its requests in flight are at the limit", retry_after_s
            ),
            "total_limit": OverloadedError(
                f"{overloaded}: the gateway's requests in flight are at the limit",
                retry_after_s,
            ),
            "queue_delay": OverloadedError(
                f"{overloaded}: requests wait longer than its queue-delay target",
                retry_after_s,
            ),
            "client_rate": RateLimitedError(
                f"this caller exceeds its rate on model {endpoint}", client_retry_s
            ),
        }

    def admit(self, client: bytes | None, now: float, hold: bool = True) -> GatewayError | None:
        """Take a place for a request at time ``now`` (seconds, monotonic); or the refusal.
        ``hold=False`` takes neither a place nor a token: the check of a request whose head
        alone is read, admitted again once whole (a refusal is counted)."""
        if now >= self._window_end:
            self._close_window(now)
        if self.in_flight >= self.cap:
            self._saturated = True
            return self._shed("queue_delay" if self.standing else "endpoint_limit", now)
        total = self._total
        if total.in_flight >= total.limit:
            return self._shed("total_limit", now)
        buckets = self._buckets
        if buckets is not None and client is not None and not buckets.take(client, now, hold):
            self.refusals["client_rate"] += 1
            return self._errors["client_rate"]
        if not hold:
            return None
        self.in_flight += 1
        total.in_flight += 1
        if self.in_flight > self._peak:
            self._peak = self.in_flight
        return None

    def release(self) -> None:
        """An admitted request is over (answered, failed, or its caller gone)."""
        self.in_flight -= 1
        self._total.in_flight -= 1

    def _shed(self, reason: str, now: float) -> GatewayError:
        self.refusals[reason] += 1
        self.last_shed = now
        return self._errors[reason]

    # -- what the batcher measures (the gate is part of the model's BatchObserver) -------------

    def queue_wait(self, seconds: float) -> None:
        """One request's wait from its arrival to the start of its batch."""
        self._sum += seconds
        self._count += 1
        if seconds < self._min:
            self._min = seconds

    def run_time(self, seconds: float) -> None:
        """One batch's run time."""
        self._run_s += _RUN_TIME_WEIGHT * (seconds - self._run_s)

    @property
    def target_s(self) -> float:
        """The queue-delay target now: the configured one plus a batch's mean run time."""
        return self._target_s + self._run_s

    def _close_window(self, now: float) -> None:
        count = self._count
        self.queue_delay_s = self._sum / count if count else 0.0
        target = self._target_s + self._run_s
        # no batch started: no queue to speak of (the in-flight limit still holds)
        self.standing = count > 0 and self._min > target
        if self.standing:
            cut = max(self._min_limit, int(self._peak * self._backoff))
            if self._adaptive:
                self.limit = min(self.limit, cut)
            self.cap = min(self.limit, cut)
        else:
            if self._adaptive and count:
                mean = self.queue_delay_s
                if mean > target and self._peak * 2 >= self.limit:
                    self.limit = max(self._min_limit, int(self.limit * self._backoff))
                elif mean <= target and self._saturated:
                    self.limit = min(self._max_limit, self.limit + math.isqrt(self.limit))
            self.cap = self.limit
        self._reset(now)

    def _reset(self, now: float) -> None:
        self._sum = 0.0
        self._count = 0
        self._min = math.inf
        self._peak = self.in_flight
        self._saturated = False
        self._window_end = now + self._interval_s
