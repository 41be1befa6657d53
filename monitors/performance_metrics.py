"""Prometheus metrics of the ground-truth side of the monitor, on a registry passed in."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from monitors.join import MAX_VARIANTS_PER_MODEL, JoinCounts
from monitors.labels import LabelValues

__all__ = ["PerformanceMetrics"]

_DECISIONS = ("a_better", "b_better", "no_difference_yet")


class PerformanceMetrics:
    """Join accounting, realized and estimated metrics per stream, A/B verdicts.

    A stream's model and version are ones the registry holds (the join takes no others); its
    variant label is bounded by ``MAX_VARIANTS_PER_MODEL`` (see ``monitors.labels``), the
    rule the join store's streams follow too."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._variants: dict[str, LabelValues] = {}
        stream = ("model", "version", "variant")
        self.feedback = Counter(
            "monitor_join_items",
            "Items through the join, by outcome: predictions (stored), duplicate_predictions, "
            "labels_joined, duplicate_labels, labels_pending, labels_unknown (no prediction "
            "within label_wait_s), labels_expired (the prediction was dropped after the "
            "horizon), predictions_expired.",
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
        labels = (model, version, self._variant(model, variant))
        self.coverage.labels(*labels).set(result["coverage"])
        for kind in ("realized", "estimated"):
            for metric, value in result.get(kind, {}).items():
                if not isinstance(value, dict) or "value" not in value:
                    continue
                for bound in ("value", "low", "high"):
                    if bound in value:
                        self.metric.labels(*labels, metric, kind, bound).set(value[bound])

    def verdict(self, model: str, pair: dict[str, Any]) -> None:
        a = f"{self._variant(model, pair['a']['variant'])}/{pair['a']['version']}"
        b = f"{self._variant(model, pair['b']['variant'])}/{pair['b']['version']}"
        metric = pair.get("metric")
        if metric is None:  # no metric to compare them on (see the pair's error)
            return
        for bound, name in (("value", "difference"), ("low", "low"), ("high", "high")):
            if pair[name] is not None:
                self.ab_difference.labels(model, a, b, metric, bound).set(pair[name])
        for decision in _DECISIONS:
            self.ab_decision.labels(model, a, b, decision).set(pair["decision"] == decision)
        self.ab_samples_needed.labels(model, a, b).set(pair["samples_needed"])

    def degraded(self, model: str, version: str, variant: str) -> None:
        self.degradations.labels(model, version, self._variant(model, variant)).inc()

    def _variant(self, model: str, variant: str) -> str:
        values = self._variants.get(model)
        if values is None:
            values = self._variants[model] = LabelValues(MAX_VARIANTS_PER_MODEL)
        return values(variant)
