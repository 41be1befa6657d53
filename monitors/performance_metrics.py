"""Prometheus metrics of the ground-truth side of the monitor, on a registry passed in."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from monitors.join import MAX_VARIANTS_PER_MODEL, JoinCounts
from monitors.labels import LabelValues

__all__ = ["PerformanceMetrics"]

_DECISIONS = ("a_better", "b_better", "no_difference_yet")

_Metric = TypeVar("_Metric", Counter, Gauge)
# A series: its metric, its label values, and the variants they name (one, or a pair's two).
_Series = tuple[Counter | Gauge, tuple[str, ...], tuple[str, ...]]


class PerformanceMetrics:
    """Join accounting, realized and estimated metrics per stream, A/B verdicts.

    A stream's model and version are ones the registry holds (the join takes no others); its
    variant label is bounded by ``MAX_VARIANTS_PER_MODEL`` (see ``monitors.labels``), the
    rule the join store's streams follow too. A variant whose place goes to a new name loses
    its series (streams and A/B pairs), so only variants that hold a place are exported."""

    def __init__(
        self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock  # for the variants' idle time
        self._variants: dict[str, LabelValues] = {}
        # (model, variant) -> the series that name it, to remove when it loses its place
        self._named: dict[tuple[str, str], set[_Series]] = {}
        stream = ("model", "version", "variant")
        self.feedback = Counter(
            "monitor_join_items",
            "Items through the join, by outcome: predictions (stored), duplicate_predictions, "
            "labels_joined, duplicate_labels, labels_pending, labels_unknown (no prediction "
            "within label_wait_s), labels_expired (the prediction was dropped after the "
            "horizon), labels_too_old (the label's own time is older than the horizon), "
            "labels_after_window (of labels_joined: the row's window was already judged), "
            "predictions_expired.",
            ("outcome",),
            registry=registry,
        )
        self.skipped = Counter(
            "monitor_performance_skipped",
            "Records or labels the join could not use, by reason.",
            ("reason",),
            registry=registry,
        )
        self.metric = Gauge(
            "monitor_performance_metric",
            "Latest judged window's metric per stream, realized (from labels) or estimated "
            "(from the predicted probabilities), with its interval bounds.",
            (*stream, "metric", "kind", "bound"),
            registry=registry,
        )
        self.coverage = Gauge(
            "monitor_performance_label_coverage",
            "Share of the latest judged window's predictions with a label.",
            stream,
            registry=registry,
        )
        self.degradations = Counter(
            "monitor_performance_degradations",
            "Degradation episodes that fired webhooks.",
            stream,
            registry=registry,
        )
        pair = ("model", "a", "b")
        self.ab_difference = Gauge(
            "monitor_ab_difference",
            "The compared metric of b minus a (rmse: the mean squared error's), with the bounds "
            "of its always-valid interval.",
            (*pair, "metric", "bound"),
            registry=registry,
        )
        self.ab_decision = Gauge(
            "monitor_ab_decision",
            "1 for the pair's current decision (a_better, b_better, no_difference_yet).",
            (*pair, "decision"),
            registry=registry,
        )
        self.ab_samples_needed = Gauge(
            "monitor_ab_samples_needed",
            "Labelled rows per variant still expected before a decision.",
            pair,
            registry=registry,
        )
        self.partitions = Gauge(
            "monitor_performance_assigned_partitions",
            "Partitions (of both topics) this instance joins.",
            registry=registry,
        )

    def joined(self, counts: JoinCounts) -> None:
        for name in counts.__slots__:
            value = getattr(counts, name)
            if value:
                self.feedback.labels(name).inc(value)

    def observe(self, key: str, result: dict[str, Any]) -> None:
        """The gauges of a stream's latest judged window."""
        model, version, variant = key.split("/", 2)
        variant = self._variant(model, variant)
        labels = (model, version, variant)
        self._series(self.coverage, model, (variant,), labels).set(result["coverage"])
        for kind in ("realized", "estimated"):
            for metric, value in result.get(kind, {}).items():
                if not isinstance(value, dict) or "value" not in value:
                    continue
                for bound in ("value", "low", "high"):
                    if bound in value:
                        series = (*labels, metric, kind, bound)
                        # NaN (no labels) comes back from the store as null after a restart
                        number = math.nan if value[bound] is None else value[bound]
                        self._series(self.metric, model, (variant,), series).set(number)

    def verdict(self, model: str, pair: dict[str, Any]) -> None:
        variants = (
            self._variant(model, pair["a"]["variant"]),
            self._variant(model, pair["b"]["variant"]),
        )
        a = f"{variants[0]}/{pair['a']['version']}"
        b = f"{variants[1]}/{pair['b']['version']}"
        metric = pair.get("metric")
        if metric is None:  # no metric to compare them on (see the pair's error)
            return

        def series(gauge: Gauge, *labels: str) -> Gauge:
            return self._series(gauge, model, variants, (model, a, b, *labels))

        for bound, name in (("value", "difference"), ("low", "low"), ("high", "high")):
            if pair[name] is not None:
                series(self.ab_difference, metric, bound).set(pair[name])
        for decision in _DECISIONS:
            series(self.ab_decision, decision).set(pair["decision"] == decision)
        series(self.ab_samples_needed).set(pair["samples_needed"])

    def degraded(self, model: str, version: str, variant: str) -> None:
        variant = self._variant(model, variant)
        self._series(self.degradations, model, (variant,), (model, version, variant)).inc()

    def _variant(self, model: str, variant: str) -> str:
        values = self._variants.get(model)
        if values is None:
            values = self._variants[model] = LabelValues(
                MAX_VARIANTS_PER_MODEL,
                clock=self._clock,
                released=lambda gone: self._release(model, gone),
            )
        return values(variant)

    def _series(
        self, metric: _Metric, model: str, variants: tuple[str, ...], labels: tuple[str, ...]
    ) -> _Metric:
        """``metric``'s child of ``labels``, noted as naming ``variants`` of ``model``."""
        for variant in variants:
            self._named.setdefault((model, variant), set()).add((metric, labels, variants))
        return metric.labels(*labels)

    def _release(self, model: str, variant: str) -> None:
        """Remove the series of a variant that lost its place (and forget the pairs it was in)."""
        for series in self._named.pop((model, variant), set()):
            metric, labels, variants = series
            metric.remove(*labels)
            for other in variants:
                self._named.get((model, other), set()).discard(series)
