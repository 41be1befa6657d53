"""Label values from outside data make a bounded number of series: a model version the registry
does not hold shares one series, and variants past the bound share one too."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

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


def judge(metrics: PerformanceMetrics, variant: str, against: str) -> None:
    """A judged window of model m's version 1 under ``variant``: every series that names it."""
    result = {"coverage": 0.5, "realized": {"accuracy": {"value": 0.9, "low": 0.8, "high": 1.0}}}
    metrics.observe(f"m/1/{variant}", result)
    metrics.degraded("m", "1", variant)
    pair = {
        "a": {"variant": against, "version": "1"},
        "b": {"variant": variant, "version": "1"},
        "metric": "accuracy",
        "difference": 0.1,
        "low": 0.0,
        "high": 0.2,
        "decision": "no_difference_yet",
        "samples_needed": 10,
    }
    metrics.verdict("m", pair)


def variants_named(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Metric -> the variants its series name (a stream's, or either side of an A/B pair)."""
    named: dict[str, set[str]] = {}
    for metric in registry.collect():
        for s in metric.samples:
            sides = [s.labels[k].rsplit("/", 1)[0] for k in ("a", "b") if k in s.labels]
            variants = {s.labels["variant"]} if "variant" in s.labels else set(sides)
            if variants:
                named.setdefault(metric.name, set()).update(variants)
    return named


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
    variants = [f"v{i}" for i in range(100)] + ["x" * 1000]
    for variant in variants:
        judge(metrics, variant, "v0")

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


def test_a_variant_that_loses_its_place_loses_its_series() -> None:
    # the series of a variant whose place went to a new name stayed until the monitor restarted:
    # /metrics kept every variant that ever held a place (up to 32 new names a day, for good)
    now = [0.0]
    registry = CollectorRegistry()
    metrics = PerformanceMetrics(registry, clock=lambda: now[0])

    judge(metrics, "v0", "v1")  # v0 is last used at 0
    now[0] = 10.0
    for i in range(1, MAX_VARIANTS_PER_MODEL):
        judge(metrics, f"v{i}", "v1" if i > 1 else "v2")
    by_variant = {
        "monitor_performance_metric",
        "monitor_performance_label_coverage",
        "monitor_performance_degradations",
        "monitor_ab_difference",
        "monitor_ab_decision",
        "monitor_ab_samples_needed",
    }
    named = variants_named(registry)
    assert {name for name, variants in named.items() if "v0" in variants} == by_variant
    now[0] = IDLE_S + 5  # v0 has been idle a day; every other variant has not
    judge(metrics, "new", "v1")

    # no stream and no A/B pair of v0 is left, on any metric; the new name has its own
    named = variants_named(registry)
    assert "v0" not in generate_latest(registry).decode()
    assert {name for name, variants in named.items() if "new" in variants} == by_variant
    assert set().union(*named.values()) == {f"v{i}" for i in range(1, MAX_VARIANTS_PER_MODEL)} | {
        "new"
    }
    # v0 may come back when a place frees again, with series of its own
    now[0] = 3 * IDLE_S
    judge(metrics, "v0", "v1")
    assert "v0" in variants_named(registry)["monitor_performance_label_coverage"]
