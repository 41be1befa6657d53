"""Metric families as plain data, so workers can send theirs to the supervisor, and the merge
that makes one ``/metrics`` for the whole server.

Series are summed over workers unless ``gateway.metrics.WORKER_AGGREGATION`` names another way
(every gauge has a row there; so do the counters every worker counts alike, which take the
maximum). A worker that ended still counts: the supervisor keeps its last counters.
``*_created`` samples take the earliest time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["Family", "families_of", "merge", "render", "summable"]

# {"name": ..., "type": ..., "help": ..., "samples": [[sample name, {label: value}, value]]}
Family = dict[str, Any]

_SUMMED = {"counter", "histogram", "summary", "gaugehistogram"}


def families_of(registry: CollectorRegistry) -> list[Family]:
    """The registry's current families as JSON-ready data."""
    return [
        {
            "name": metric.name,
            "type": metric.type,
            "help": metric.documentation,
            "samples": [[s.name, s.labels, _finite_or_text(s.value)] for s in metric.samples],
        }
        for metric in registry.collect()
    ]


def summable(families: Iterable[Family]) -> list[Family]:
    """The families that keep counting after their worker ends (not gauges)."""
    return [f for f in families if f["type"] in _SUMMED]


def merge(sources: Iterable[list[Family]], modes: dict[str, str]) -> list[Family]:
    """One family per name, each series combined over ``sources`` (in first-seen order)."""
    merged: dict[str, Family] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in sources:
        for family in families:
            name = family["name"]
            if name not in merged:
                merged[name] = {k: family[k] for k in ("name", "type", "help")}
                values[name] = {}
            mode = modes.get(name, "sum")
            series = values[name]
            for sample_name, labels, raw in family["samples"]:
                key = (sample_name, tuple(sorted(labels.items())))
                value = _number(raw)
                if key not in series:
                    series[key] = value
                elif sample_name.endswith("_created"):
                    series[key] = min(series[key], value)
                else:
                    series[key] = _combine(mode, series[key], value)
    for name, family in merged.items():
        family["samples"] = [
            [sample_name, dict(labels), _finite_or_text(value)]
            for (sample_name, labels), value in values[name].items()
        ]
    return list(merged.values())


def render(families: list[Family]) -> bytes:
    """The Prometheus text exposition of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            metric = Metric(family["name"], family["help"], family["type"])
            for sample_name, labels, value in family["samples"]:
                metric.add_sample(sample_name, labels, _number(value))
            yield metric


def _combine(mode: str, a: float, b: float) -> float:
    if mode == "max":
        return max(a, b)
    if mode == "min":
        return min(a, b)
    return a + b


def _finite_or_text(value: float) -> float | str:
    # JSON has no NaN or infinities; they travel as Prometheus spells them
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _number(value: float | str) -> float:
    return float(value)
