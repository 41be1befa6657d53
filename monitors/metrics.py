"""The monitor's Prometheus metrics, declared once on a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from monitors.webhooks import Delivery

__all__ = ["MonitorMetrics"]


class MonitorMetrics:
    """The monitor's Prometheus metrics, on a registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        mv = ("model", "version")
        self.records = Counter("monitor_records", "Log records consumed.", mv, registry=registry)
        self.skipped = Counter(
            "monitor_skipped_records",
            "Records not evaluated, by reason.",
            ("reason",),
            registry=registry,
        )
        self.lag = Gauge(
            "monitor_lag_records",
            "Records behind the partition's end.",
            ("partition",),
            registry=registry,
        )
        self.windows = Counter(
            "monitor_windows",
            "Windows closed, by status (ok, drift, insufficient).",
            (*mv, "status"),
            registry=registry,
        )
        self.statistic = Gauge(
            "monitor_feature_statistic",
            "Latest window's test statistic (KS D or Cramer's V).",
            (*mv, "feature"),
            registry=registry,
        )
        self.p_value = Gauge(
            "monitor_feature_p_value",
            "Latest window's p-value.",
            (*mv, "feature"),
            registry=registry,
        )
        self.neg_log10_p = Gauge(
            "monitor_feature_neg_log10_p_value",
            "Latest window's p-value as -log10 (finite where the p-value underflows to 0).",
            (*mv, "feature"),
            registry=registry,
        )
        self.psi = Gauge(
            "monitor_feature_psi", "Latest window's PSI.", (*mv, "feature"), registry=registry
        )
        self.psi_threshold = Gauge(
            "monitor_feature_psi_threshold",
            "Latest window's PSI threshold (the setting plus PSI's noise level at its size).",
            (*mv, "feature"),
            registry=registry,
        )
        self.flagged = Gauge(
            "monitor_feature_drifted",
            "1 when the latest window flagged the feature as drifted, else 0.",
            (*mv, "feature"),
            registry=registry,
        )
        self.decisions = Counter(
            "monitor_drift_decisions", "Drift episodes that fired webhooks.", mv, registry=registry
        )
        self.deliveries = Counter(
            "monitor_webhook_deliveries",
            "Webhook deliveries by outcome.",
            ("target", "status"),
            registry=registry,
        )

        self.restores = Counter(
            "monitor_state_restores",
            "Partitions taken on, by outcome: restored from their snapshot, or empty windows.",
            ("outcome",),
            registry=registry,
        )

        self.partitions = Gauge(
            "monitor_assigned_partitions",
            "Partitions of the inference log this instance reads.",
            registry=registry,
        )

    def delivered(self, delivery: Delivery) -> None:
        self.deliveries.labels(delivery.target, delivery.status).inc()
