"""The monitor's Prometheus metrics, declared once on a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
            "Partitions taken on, by where their state came from: changelog, cache (the local "
            "copy of the changelog's latest snapshot), empty (no snapshot), stale (a snapshot "
            "older than the committed offset), failed (retried).",
            ("outcome",),
            registry=registry,
        )
        self.restore_seconds = Histogram(
            "monitor_state_restore_seconds",
            "Time to take a partition on: reading the changelog, decoding, restoring windows.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=registry,
        )
        self.changelog_writes = Counter(
            "monitor_changelog_writes",
            "Snapshots written to the changelog topic, by layout (single record, or chunked "
            "because the compressed snapshot was over kafka.changelog.max_message_bytes).",
            ("layout",),
            registry=registry,
        )
        self.changelog_bytes = Counter(
            "monitor_changelog_written_bytes",
            "Compressed snapshot bytes written to the changelog topic.",
            registry=registry,
        )
        self.snapshot_bytes = Gauge(
            "monitor_changelog_snapshot_bytes",
            "Compressed size of the partition's latest snapshot.",
            ("partition",),
            registry=registry,
        )
        self.changelog_errors = Counter(
            "monitor_changelog_errors",
            "Changelog operations that failed (write: the offsets stay uncommitted; read: the "
            "partition is taken on again at the next batch).",
            ("operation",),
            registry=registry,
        )

        self.partitions = Gauge(
            "monitor_assigned_partitions",
            "Partitions of the inference log this instance reads.",
            registry=registry,
        )

    def delivered(self, delivery: Delivery) -> None:
        self.deliveries.labels(delivery.target, delivery.status).inc()
