"""Prometheus metrics of the gateway, declared once on a registry that is passed in."""

from __future__ import annotations

import collections
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "WORKER_AGGREGATION",
    "AdmissionCollector",
    "BatchMetrics",
    "FeatureLogMetrics",
    "GatewayMetrics",
    "LoadSnapshot",
    "ProcessLoad",
    "ShadowMetrics",
]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# How `gateway serve --workers N` combines a family over its workers into one /metrics; what is
# not here is summed. Every gauge declared here needs a row, and so does a counter that every
# worker counts alike (each applies every route change).
WORKER_AGGREGATION: dict[str, str] = {
    "gateway_route_changes": "max",
    "gateway_canary_events": "max",
    "gateway_queue_depth": "sum",  # requests waiting in all workers' queues
    "gateway_model_loaded": "max",  # 1 while any worker serves that version
    "gateway_model_not_taken_up": "max",  # 1 while any worker could not take the version up
    "gateway_build_info": "max",
    "gateway_feature_log_queue_depth": "sum",
    "gateway_feature_log_spool_messages": "sum",  # each worker has its own spool
    "gateway_feature_log_spool_bytes": "sum",
    "gateway_feedback_log_queue_depth": "sum",  # the feedback log's, likewise per worker
    "gateway_feedback_log_spool_messages": "sum",
    "gateway_feedback_log_spool_bytes": "sum",
    "gateway_workers": "sum",  # the supervisor's own
    # admission control is per worker: what each admits adds up
    "gateway_admission_in_flight": "sum",
    "gateway_admission_limit": "sum",
    "gateway_admission_queue_delay_seconds": "max",
    "gateway_admission_all_in_flight": "sum",
    "gateway_admission_all_limit": "sum",
    "gateway_admission_waiting_turn": "sum",
}
_SERVING = ("model", "version", "variant", "outcome")
_VERSION = ("model", "version", "variant")


class GatewayMetrics:
    """All of the gateway's metrics. A test passes a fresh ``CollectorRegistry``."""

    def __init__(self, registry: CollectorRegistry, gateway_version: str) -> None:
        self.registry = registry
        # (model, version, variant[, ref]) -> deployments serving under those labels now
        self._serving: collections.Counter[tuple[str, ...]] = collections.Counter()
        self.requests = Counter(
            "gateway_requests", "Inference requests answered.", _SERVING, registry=registry
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from a request's arrival to its answer.",
            _SERVING,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.rows = Counter(
            "gateway_rows", "Rows (instances) predicted.", _VERSION, registry=registry
        )
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds",
            "Time from a request's first byte seen to the start of its batch.",
            _VERSION,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_duration = Histogram(
            "gateway_inference_duration_seconds",
            "Time one batch took in onnxruntime.",
            _VERSION,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "gateway_batch_rows",
            "Rows per model batch.",
            _VERSION,
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "gateway_batch_requests",
            "Requests combined into one model batch.",
            _VERSION,
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.batches = Counter(
            "gateway_batches",
            "Batches run, by why they closed (full, timeout, idle, drain).",
            (*_VERSION, "reason"),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Requests waiting in the batch queue.",
            _VERSION,
            registry=registry,
        )
        self.model_loads = Counter(
            "gateway_model_loads",
            "Model version loads, by outcome (success, failure).",
            (*_VERSION, "outcome"),
            registry=registry,
        )
        self.model_swaps = Counter(
            "gateway_model_swaps",
            "Switches of a served model to a new version.",
            ("model", "variant"),
            registry=registry,
        )
        self.model_loaded = Gauge(
            "gateway_model_loaded",
            "1 for each model version that serves traffic now.",
            (*_VERSION, "ref"),
            registry=registry,
        )
        self.model_not_taken_up = Gauge(
            "gateway_model_not_taken_up",
            "1 while a model reference points at this version but it could not be loaded "
            "(refused or failing); the version served before, if any, serves meanwhile.",
            (*_VERSION, "ref"),
            registry=registry,
        )
        self.build_info = Gauge(
            "gateway_build_info",
            "Versions the gateway was built with.",
            ("version", "python", "onnxruntime"),
            registry=registry,
        )
        import onnxruntime  # here, not above: parse processes import this module, never build it

        runtime_version = onnxruntime.__version__
        self.build_info.labels(gateway_version, platform.python_version(), runtime_version).set(1)
        self.feature_log = FeatureLogMetrics(registry)
        # The feedback log is a second feature log (on the feedback topic), counted apart.
        self.feedback_log = FeatureLogMetrics(registry, "gateway_feedback_log")
        self.feedback_items = Counter(
            "gateway_feedback_items",
            "Feedback items (labels) received, by outcome: accepted, invalid.",
            ("model", "outcome"),
            registry=registry,
        )
        _pair = ("model", "primary", "shadow")
        self.shadow_requests = Counter(
            "gateway_shadow_requests",
            "Shadow copies by outcome: ok, error, dropped_queue_full, dropped_not_ready, "
            "dropped_shutdown.",
            (*_pair, "outcome"),
            registry=registry,
        )
        self.shadow_rows = Counter(
            "gateway_shadow_rows",
            "Rows compared between primary and shadow, by whether the predicted class agreed.",
            (*_pair, "agreement"),
            registry=registry,
        )
        self.shadow_latency = Histogram(
            "gateway_shadow_duration_seconds",
            "Time a shadow took to answer its copy.",
            _pair,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.shadow_abs_diff = Histogram(
            "gateway_shadow_abs_diff",
            "Largest absolute difference between primary and shadow numeric outputs per request.",
            _pair,
            buckets=(1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0),
            registry=registry,
        )
        self.canary_events = Counter(
            "gateway_canary_events",
            "Canary ramp events: step, promoted, rolled_back, held (the owner says why a due step "
            "waits), taken_over (another replica drives it: its owner went quiet).",
            ("model", "variant", "event"),
            registry=registry,
        )
        self.route_changes = Counter(
            "gateway_route_changes",
            "Route changes applied on this replica, by who made them.",
            ("model", "actor"),
            registry=registry,
        )
        self.route_conflicts = Counter(
            "gateway_route_conflicts",
            "Route changes skipped because the route had changed since they were made (the "
            "proposer makes them again on the new state, or answers 412).",
            ("model",),
            registry=registry,
        )
        self.audit_failures = Counter(
            "gateway_audit_write_failures",
            "Route changes applied whose audit entry could not be written.",
            registry=registry,
        )
        self.control_rejected = Counter(
            "gateway_control_messages_rejected",
            "Control-topic messages refused, by reason: unsigned, bad_signature, malformed.",
            ("reason",),
            registry=registry,
        )
        self.large_bodies = Counter(
            "gateway_large_bodies",
            "Inference bodies over 256 KiB parsed, by where: process (a parse process) or thread.",
            ("parsed_in",),
            registry=registry,
        )
        self.parse_processes_lost = Counter(
            "gateway_parse_processes_lost",
            "Parse processes that ended unexpectedly (killed, out of memory) and were replaced.",
            registry=registry,
        )

    def watch_admission(self, snapshot: Callable[[], ProcessLoad]) -> AdmissionCollector:
        """Expose admission control's state, read when scraped (nothing per request)."""
        collector = AdmissionCollector(snapshot)
        self.registry.register(collector)
        return collector

    def for_batches(self, model: str, version: str, variant: str) -> BatchMetrics:
        """Metrics of one model version's batcher, with labels bound once."""
        return BatchMetrics(self, model, version, variant)

    def loaded(self, model: str, version: str, variant: str, ref: str) -> None:
        """A model version serves now; ``forget`` it once it is unloaded."""
        self._serving[(model, version, variant)] += 1
        self._serving[(model, version, variant, ref)] += 1
        self.model_loaded.labels(model, version, variant, ref).set(1)

    def forget(self, model: str, version: str, variant: str, ref: str) -> None:
        """Drop a version's gauges after it is unloaded, unless another deployment serves it
        under the same labels: the same version loaded again while this one drained (an alias
        moved away and back), or the variant's new reference resolving to the same version."""
        if self._release((model, version, variant, ref)):
            self.model_loaded.remove(model, version, variant, ref)
        if self._release((model, version, variant)):
            self.queue_depth.remove(model, version, variant)

    def _release(self, labels: tuple[str, ...]) -> bool:
        """One server of ``labels`` fewer; True when none is left."""
        self._serving[labels] -= 1
        if self._serving[labels] > 0:
            return False
        del self._serving[labels]
        return True


class BatchMetrics:
    """A ``BatchObserver`` feeding one model version's batching series."""

    def __init__(self, metrics: GatewayMetrics, model: str, version: str, variant: str) -> None:
        labels = (model, version, variant)
        self._wait = metrics.queue_wait.labels(*labels)
        self._run = metrics.inference_duration.labels(*labels)
        self._rows = metrics.batch_rows.labels(*labels)
        self._requests = metrics.batch_requests.labels(*labels)
        self._depth = metrics.queue_depth.labels(*labels)
        self._batches = {
            reason: metrics.batches.labels(*labels, reason)
            for reason in ("full", "timeout", "idle", "drain")
        }

    def batch_closed(self, rows: int, requests: int, reason: str) -> None:
        self._rows.observe(rows)
        self._requests.observe(requests)
        self._batches[reason].inc()

    def queue_wait(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def run_time(self, seconds: float) -> None:
        self._run.observe(seconds)


class FeatureLogMetrics:
    """Accounting of every log record: produced, spooled, replayed, or dropped with a reason."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "gateway_feature_log") -> None:
        records = Counter(
            f"{prefix}_records",
            "Log records by event: produced (sent directly), spooled (to disk), replayed "
            "(from disk to the broker).",
            ("event",),
            registry=registry,
        )
        self._produced = records.labels("produced")
        self._spooled = records.labels("spooled")
        self._replayed = records.labels("replayed")
        self._dropped = Counter(
            f"{prefix}_dropped_records",
            "Log records dropped by policy, by reason (queue_full, spool_full, spool_error, "
            "sampled_out, shutdown, dead_letter_full, dead_letter_error).",
            ("reason",),
            registry=registry,
        )
        self._dead_lettered = Counter(
            f"{prefix}_dead_letter_records",
            "Log records the broker refused for good, kept in the dead-letter file, by reason "
            "(message_too_large, topic_authorization_failed, ...).",
            ("reason",),
            registry=registry,
        )
        oversized = Counter(
            f"{prefix}_oversized_records",
            "Log records over max_message_bytes on their own, by what was done: split (by rows, "
            "into parts) or cut (logged without features, inputs and outputs).",
            ("action",),
            registry=registry,
        )
        self._split = oversized.labels("split")
        self._cut = oversized.labels("cut")
        self._queue = Gauge(
            f"{prefix}_queue_depth", "Records waiting in memory.", registry=registry
        )
        self._spool_messages = Gauge(
            f"{prefix}_spool_messages",
            "Kafka messages (each one or more records) waiting in the disk spool.",
            registry=registry,
        )
        self._spool_bytes = Gauge(
            f"{prefix}_spool_bytes", "Bytes waiting in the disk spool.", registry=registry
        )

    def produced(self, count: int) -> None:
        self._produced.inc(count)

    def spooled(self, count: int) -> None:
        self._spooled.inc(count)

    def replayed(self, count: int) -> None:
        self._replayed.inc(count)

    def dropped(self, reason: str, count: int = 1) -> None:
        self._dropped.labels(reason).inc(count)

    def dead_lettered(self, reason: str, count: int) -> None:
        self._dead_lettered.labels(reason).inc(count)

    def oversized(self, split: int, cut: int) -> None:
        self._split.inc(split)
        self._cut.inc(cut)

    def depths(self, queue: int, spool_messages: int, spool_bytes: int) -> None:
        self._queue.set(queue)
        self._spool_messages.set(spool_messages)
        self._spool_bytes.set(spool_bytes)


class ShadowMetrics:
    """Per (endpoint, shadow) comparison metrics; the primary variant is a label."""

    def __init__(self, metrics: GatewayMetrics, endpoint: str, shadow: str) -> None:
        self._metrics = metrics
        self._endpoint = endpoint
        self._shadow = shadow

    def outcome(self, primary: str, outcome: str) -> None:
        self._metrics.shadow_requests.labels(self._endpoint, primary, self._shadow, outcome).inc()

    def compared(
        self,
        primary: str,
        latency_s: float,
        agreement: float | None,
        rows: int,
        max_abs_diff: float | None,
    ) -> None:
        labels = (self._endpoint, primary, self._shadow)
        m = self._metrics
        m.shadow_requests.labels(*labels, "ok").inc()
        m.shadow_latency.labels(*labels).observe(latency_s)
        if agreement is not None:
            agreed = round(agreement * rows)
            m.shadow_rows.labels(*labels, "agree").inc(agreed)
            m.shadow_rows.labels(*labels, "disagree").inc(rows - agreed)
        if max_abs_diff is not None:
            m.shadow_abs_diff.labels(*labels).observe(max_abs_diff)


@dataclass(frozen=True)
class LoadSnapshot:
    """One endpoint's admission state at a scrape."""

    model: str
    in_flight: int
    limit: int
    queue_delay_s: float
    refusals: dict[str, int]


@dataclass(frozen=True)
class ProcessLoad:
    """Admission control's state at a scrape: per endpoint, and for the whole process."""

    endpoints: list[LoadSnapshot]
    in_flight: int
    limit: int
    waiting_turn: int  # admitted inference calls waiting for a pass of the event loop
    deferred: int  # how many ever have (a counter)


class AdmissionCollector(Collector):
    """In flight, limits, queue delay and refusals by reason, read from admission control's
    own counters when scraped: admitting or refusing a request touches no metric object."""

    def __init__(self, snapshot: Callable[[], ProcessLoad]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        process = self._snapshot()
        in_flight, limit, delay, refusals, all_in_flight, all_limit, waiting, deferred = (
            self._families()
        )
        for load in process.endpoints:
            in_flight.add_metric([load.model], load.in_flight)
            limit.add_metric([load.model], load.limit)
            delay.add_metric([load.model], load.queue_delay_s)
            for reason, count in load.refusals.items():
                refusals.add_metric([load.model, reason], count)
        all_in_flight.add_metric([], process.in_flight)
        all_limit.add_metric([], process.limit)
        waiting.add_metric([], process.waiting_turn)
        deferred.add_metric([], process.deferred)
        return iter(
            (in_flight, limit, delay, refusals, all_in_flight, all_limit, waiting, deferred)
        )

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
    ]:
        return (
            GaugeMetricFamily(
                "gateway_admission_in_flight",
                "Admitted requests not yet answered, per endpoint.",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "gateway_admission_limit",
                "The endpoint's in-flight limit now (adaptive or fixed).",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "gateway_admission_queue_delay_seconds",
                "Mean wait from first byte to batch start over the last admission window.",
                labels=["model"],
            ),
            CounterMetricFamily(
                "gateway_admission_refusals",
                "Requests refused before any work, by reason (endpoint_limit, total_limit, "
                "queue_delay, client_rate).",
                labels=["model", "reason"],
            ),
            GaugeMetricFamily(
                "gateway_admission_all_in_flight",
                "Admitted requests not yet answered, all endpoints together.",
            ),
            GaugeMetricFamily(
                "gateway_admission_all_limit",
                "The bound on requests in flight over all endpoints.",
            ),
            GaugeMetricFamily(
                "gateway_admission_waiting_turn",
                "Admitted inference calls waiting for a pass of the event loop to be parsed.",
            ),
            CounterMetricFamily(
                "gateway_admission_deferred",
                "Admitted inference calls that waited for a later pass of the event loop "
                "(admission.pass_slice_s).",
            ),
        )
