"""Bounds on the label values of the monitors' Prometheus metrics.

Each distinct label value is a time series kept until the process ends, and every scrape
writes it, so a value taken from outside data (a log record, a feedback record, an event) must
not make series without bound. The rule: a model or version in a label is one the registry
holds (the monitor checks before it labels); any other free text goes through ``LabelValues``,
which keeps a few distinct values at a time (a value unused for a day gives its place to the
next new one, and its owner removes the series that named it) and counts every other or
overlong one under ``OTHER``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["IDLE_S", "MAX_LABEL_CHARS", "OTHER", "LabelValues"]

OTHER = "__other__"
# as long as a registry's model name may be (registry_client.reference.MAX_NAME)
MAX_LABEL_CHARS = 128
# A value unused this long gives its place to a new one.
IDLE_S = 24 * 3600.0


class LabelValues:
    """The values one label takes: at most ``limit`` distinct ones of at most
    ``MAX_LABEL_CHARS`` characters at a time; every other value is ``OTHER``. A value unused
    for ``idle_s`` gives its place to the next new one, so names that come and go over a
    long life (a variant per rollout) each get their own while a flood cannot. ``released`` is
    called with a value when its place goes to a new one, to remove the series that name it.

    >>> variants = LabelValues(1)
    >>> variants("champion"), variants("x" * 200), variants("challenger"), variants("champion")
    ('champion', '__other__', '__other__', 'champion')
    """

    def __init__(
        self,
        limit: int,
        idle_s: float = IDLE_S,
        clock: Callable[[], float] = time.monotonic,
        released: Callable[[str], None] | None = None,
    ) -> None:
        self._limit = limit
        self._released = released
        self._idle_s = idle_s
        self._clock = clock
        self._used: OrderedDict[str, float] = OrderedDict()  # value -> last used, oldest first

    def __call__(self, value: str) -> str:
        used = self._used
        now = self._clock()
        if value in used:
            used[value] = now
            used.move_to_end(value)
            return value
        if len(value) > MAX_LABEL_CHARS or value == OTHER:
            return OTHER
        if len(used) >= self._limit:
            oldest, last = next(iter(used.items()))
            if now - last < self._idle_s:
                return OTHER
            del used[oldest]
            if self._released is not None:
                self._released(oldest)
        used[value] = now
        return value
