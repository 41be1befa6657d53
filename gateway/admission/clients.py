"""Per-client token buckets: one caller cannot take an endpoint's whole capacity."""

from __future__ import annotations

__all__ = ["ClientBuckets"]


class ClientBuckets:
    """A token bucket per caller key, refilled at ``rate_per_s`` up to ``burst`` tokens.

    The table is bounded: when it holds ``max_clients`` keys, the buckets that have refilled
    (idle callers: forgetting them loses nothing) are dropped, then the oldest keys, down to
    three quarters, so the cost of a full table is paid once per many new keys. A caller
    forgotten while active starts again with a full bucket.
    """

    def __init__(self, rate_per_s: float, burst: int, max_clients: int) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max = max_clients
        self._buckets: dict[bytes, list[float]] = {}  # key -> [tokens, updated at]

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: bytes, now: float, take: bool = True) -> bool:
        """Take one token from ``key``'s bucket at time ``now``; False when it is empty.
        ``take=False`` only checks that there is one."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if not take:
                return True
            if len(self._buckets) >= self._max:
                self._evict(now)
            self._buckets[key] = [self._burst - 1.0, now]
            return True
        tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
        bucket[1] = now
        if tokens < 1.0 or not take:
            bucket[0] = tokens
            return tokens >= 1.0
        bucket[0] = tokens - 1.0
        return True

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        rate, burst = self._rate, self._burst
        idle = [k for k, (tokens, at) in buckets.items() if tokens + (now - at) * rate >= burst]
        for key in idle:
            del buckets[key]
        keep = self._max * 3 // 4
        if len(buckets) > keep:
            for key in list(buckets)[: len(buckets) - keep]:  # dicts keep insertion order
                del buckets[key]
