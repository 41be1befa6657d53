from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import WORKER_AGGREGATION, GatewayMetrics
from gateway.workers._families import families_of, merge, render, summable


def _worker(requests: int, depth: float, latency: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("gateway_requests", "r", ["model"], registry=registry).labels("m").inc(requests)
    Gauge("gateway_queue_depth", "d", ["model"], registry=registry).labels("m").set(depth)
    Gauge("gateway_build_info", "b", ["version"], registry=registry).labels("1").set(1)
    Counter("gateway_route_changes", "c", registry=registry).inc(2)  # each worker applies each
    hist = Histogram("gateway_request_duration_seconds", "h", ["model"], registry=registry)
    hist.labels("m").observe(latency)
    return registry


def _values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_and_histograms_are_summed_and_gauges_combined_as_declared() -> None:
    a, b = families_of(_worker(3, 2, 0.001)), families_of(_worker(5, 4, 0.2))
    values = _values(render(merge([a, b], WORKER_AGGREGATION)))
    assert values[("gateway_requests_total", (("model", "m"),))] == 8
    assert values[("gateway_queue_depth", (("model", "m"),))] == 6  # sum
    assert values[("gateway_build_info", (("version", "1"),))] == 1  # max
    assert values[("gateway_route_changes_total", ())] == 2  # max: counted alike by every worker
    count = ("gateway_request_duration_seconds_count", (("model", "m"),))
    assert values[count] == 2
    fast = ("gateway_request_duration_seconds_bucket", (("le", "0.005"), ("model", "m")))
    assert values[fast] == 1
    infinite = ("gateway_request_duration_seconds_bucket", (("le", "+Inf"), ("model", "m")))
    assert values[infinite] == 2


def test_a_series_only_one_worker_has_appears_once_and_created_takes_the_earliest() -> None:
    first = CollectorRegistry()
    Counter("gateway_rows", "r", ["model"], registry=first).labels("a").inc()
    second = CollectorRegistry()
    rows = Counter("gateway_rows", "r", ["model"], registry=second)
    rows.labels("a").inc()
    rows.labels("b").inc(2)
    merged = merge([families_of(first), families_of(second)], WORKER_AGGREGATION)
    samples = {(s[0], s[1].get("model")): s[2] for s in merged[0]["samples"]}
    assert samples[("gateway_rows_total", "a")] == 2
    assert samples[("gateway_rows_total", "b")] == 2
    created = [s for s in families_of(first)[0]["samples"] if s[0].endswith("_created")]
    assert samples[("gateway_rows_created", "a")] == created[0][2]


def test_only_counting_families_outlive_their_worker() -> None:
    names = {f["name"] for f in summable(families_of(_worker(1, 1, 0.1)))}
    assert names == {
        "gateway_requests",
        "gateway_request_duration_seconds",
        "gateway_route_changes",
    }


def test_every_gateway_gauge_says_how_workers_combine() -> None:
    registry = CollectorRegistry()
    GatewayMetrics(registry, "test")
    gauges = {f.name for f in registry.collect() if f.type == "gauge"}
    missing = gauges - set(WORKER_AGGREGATION)
    assert missing == set(), f"add a row to gateway.metrics.WORKER_AGGREGATION for {missing}"
    assert set(WORKER_AGGREGATION.values()) <= {"sum", "max", "min"}
