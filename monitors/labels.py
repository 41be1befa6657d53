"""Bounds on the label values of the monitors' Prometheus metrics.

Each distinct label value is a time series kept until the process ends, and every scrape
writes it, so a value taken from outside data (a log record, a feedback record, an event) must
not make series without bound. The rule: a model or version in a label is one the registry
holds (the monitor checks before it labels); any other free text goes through ``LabelValues``,
which keeps the first few distinct values and counts every later or overlong one under
``OTHER``.
"""

from __future__ import annotations

__all__ = ["MAX_LABEL_CHARS", "OTHER", "LabelValues"]

OTHER = "__other__"
# as long as a registry's model name may be (registry_client.reference.MAX_NAME)
MAX_LABEL_CHARS = 128


class LabelValues:
    """The values one label takes: the first ``limit`` distinct ones of at most
    ``MAX_LABEL_CHARS`` characters; every other value is ``OTHER``.

    >>> variants = LabelValues(1)
    >>> variants("champion"), variants("x" * 200), variants("challenger"), variants("champion")
    ('champion', '__other__', '__other__', 'champion')
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(value) > MAX_LABEL_CHARS or len(self._seen) >= self._limit or value == OTHER:
            return OTHER
        self._seen.add(value)
        return value
