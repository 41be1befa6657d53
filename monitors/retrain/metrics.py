"""The worker's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RetrainMetrics"]

_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class RetrainMetrics:
    """Events received by outcome; job transitions and the time spent in each state."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "retrain_events_total",
            "Events received, by what became of them",
            ["outcome"],
            registry=self.registry,
        )
        self.transitions = Counter(
            "retrain_job_transitions_total",
            "Jobs entering each state, by model",
            ["model", "state"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "retrain_job_state_duration_seconds",
            "Time jobs spent in each state",
            ["state"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.jobs = Gauge(
            "retrain_jobs", "Jobs in each state now", ["state"], registry=self.registry
        )
