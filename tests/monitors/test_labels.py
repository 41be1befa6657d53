"""Label values from outside data make a bounded number of series: a model version the registry
does not hold shares one series, and variants past the bound share one too."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from monitors.join import MAX_VARIANTS_PER_MODEL
from monitors.labels import IDLE_S, MAX_LABEL_CHARS, OTHER, LabelValues
from monitors.metrics import MonitorMetrics
from monitors.performance_metrics import PerformanceMetrics
from monitors.service import MonitorService
from monitors.settings import MonitorSettings
from tests.monitors._records import X, consumer_records, demo_profile, records

MODEL = "breast_cancer"


def label_sets(registry: CollectorRegistry, sample: str) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of one sample name's series."""
    return {
        tuple(sorted(s.labels.items()))
        for metric in registry.collect()
        for s in metric.samples
        if s.name == sample
    }


def test_a_label_value_is_one_of_the_first_few_or_other() -> None:
    values = LabelValues(2)
    assert [values(v) for v in ("a", "x" * (MAX_LABEL_CHARS + 1), "b", "c", "a", OTHER)] == [
        "a",
        OTHER,
        "b",
        OTHER,
        "a",
        OTHER,
    ]


def test_a_value_unused_for_a_day_gives_its_place_to_a_new_one() -> None:
    # before, the first values kept their places for good: a variant first seen after 16 others
    # (a name per rollout, over months) was pooled, and a canary's gate on it never decided
    now = [0.0]
    values = LabelValues(2, idle_s=IDLE_S, clock=lambda: now[0])
    assert [values(v) for v in ("a", "b", "c")] == ["a", "b", OTHER]  # full, both in use
    now[0] = IDLE_S - 1
    assert values("a") == "a"  # a is in use again; b has been idle since 0
    now[0] = IDLE_S + 1
    assert values("c") == "c"  # takes b's place
    assert values("d") == OTHER  # a and c were used within the day
    assert values("b") == OTHER  # b lost its place
    now[0] = 3 * IDLE_S
    assert [values(v) for v in ("b", "e", "c")] == ["b", "e", OTHER]


async def test_records_of_versions_without_a_profile_share_one_series(
    demo_registry: Path, tmp_path: Path
) -> None:
    # each (model, version) in the log made a monitor_records_total series, whatever its text
    demo_profile().dump(demo_registry / MODEL / "1")
    registry = CollectorRegistry()
    monitor = MonitorService(
        MonitorSettings(registry_root=demo_registry, state_dir=tmp_path / "state"),
        MonitorMetrics(registry),
    )
    batch = records(X[:10], model=MODEL)
    for i in range(100):
        batch += records(X[:2], model=f"ghost-{i}", version=str(i), prefix=f"g{i}-")
    batch += records(X[:2], model=MODEL, version="99", prefix="v99-")
    await monitor.consume(0, consumer_records(batch))
    await monitor.webhooks.aclose()

    series = label_sets(registry, "monitor_records_total")
    assert series == {
        (("model", MODEL), ("version", "1")),
        (("model", OTHER), ("version", OTHER)),
    }
    skipped = registry.get_sample_value(
        "monitor_skipped_records_total", {"reason": "no_reference_profile"}
    )
    assert skipped == 202
    assert registry.get_sample_value("monitor_records_total", {"model": OTHER, "version": OTHER})


def test_variants_past_the_bound_share_one_series() -> None:
    # a stream's variant is the log record's text: each one made series of its own
    registry = CollectorRegistry()
    metrics = PerformanceMetrics(registry)
    result = {"coverage": 0.5, "realized": {"accuracy": {"value": 0.9, "low": 0.8, "high": 1.0}}}
    variants = [f"v{i}" for i in range(100)] + ["x" * 1000]
    for variant in variants:
        metrics.observe(f"m/1/{variant}", result)
        metrics.degraded("m", "1", variant)
        pair = {
            "a": {"variant": "v0", "version": "1"},
            "b": {"variant": variant, "version": "1"},
            "metric": "accuracy",
            "difference": 0.1,
            "low": 0.0,
            "high": 0.2,
            "decision": "no_difference_yet",
            "samples_needed": 10,
        }
        metrics.verdict("m", pair)

    kept = {f"v{i}" for i in range(MAX_VARIANTS_PER_MODEL)}
    for sample in ("monitor_performance_label_coverage", "monitor_performance_degradations_total"):
        labelled = {dict(s)["variant"] for s in label_sets(registry, sample)}
        assert labelled == kept | {OTHER}, sample
    pairs = {dict(s)["b"] for s in label_sets(registry, "monitor_ab_samples_needed")}
    assert pairs == {f"{v}/1" for v in kept | {OTHER}}
    # another model's variants have bounds of their own
    metrics.degraded("n", "1", "v99")
    assert registry.get_sample_value(
        "monitor_performance_degradations_total", {"model": "n", "version": "1", "variant": "v99"}
    )
