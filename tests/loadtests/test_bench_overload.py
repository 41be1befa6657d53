"""The overload benchmark's report: both ports' slowest liveness probe."""

from __future__ import annotations

from typing import Any

from loadtests.bench_overload import (
    Schedule,
    analyze,
    markdown,
    recovery_s,
    settled_s,
    summarize,
)
from loadtests.openloop import Sample


def _row(health_ms: float | None, health_failed: int) -> dict[str, Any]:
    schedule = Schedule(calm_s=1.0, phase_s=1.0, recovery_s=1.0)
    samples: list[Sample] = [
        (0.5, 0.002, "200", 0.0, 1),
        (1.2, 0.004, "200", 0.0, 1),
        (2.5, 0.002, "200", 0.0, 1),
    ]
    # the main port's probes: one before the overload (not counted), a slow one during it
    probes: list[tuple[float, float | None, str]] = [
        (0.5, 0.9, "200"),
        (1.1, 0.8, "200"),
        (1.6, None, "TimeoutError"),
    ]
    row = analyze(samples, probes, capacity=1.0, schedule=schedule)
    row.update(multiple=2.0, server="gateway-admission", capacity=1.0, loadavg_1m_before=1.0,
               cores={"others_on_cpu0": 0.0})  # fmt: skip
    if health_ms is not None:
        row.update(health_liveness_max_ms=health_ms, health_liveness_failed=health_failed)
    return row


def test_the_liveness_target_is_read_on_the_health_port_when_it_is_on() -> None:
    main_only = _row(None, 0)
    assert main_only["liveness_max_ms"] == 800.0  # the probe before the overload is not counted
    assert main_only["liveness_failed"] == 1
    report = summarize([main_only, _row(4.0, 0), _row(3.0, 1)])
    (entry,) = report.values()
    assert [held["liveness"] for held in entry["targets_held"]] == [False, True, False]
    assert entry["health_liveness_max_ms"] == {"median": 3.5, "runs": [None, 4.0, 3.0]}
    table = markdown(report)
    assert "| health port |" in table
    assert "| 800 (800, 800, 800) | 4 (-, 4, 3) |" in table


def _recovery_samples(bad_bins: set[int]) -> list[Sample]:
    # the overload ends at 10.0 s; 5 s of recovery in 100 ms bins, 3 answers a bin: 2 ms,
    # or 80 ms in the bins named bad
    samples: list[Sample] = []
    for index in range(50):
        latency = 0.080 if index in bad_bins else 0.002
        for k in range(3):
            samples.append((10.0 + index * 0.1 + 0.02 + k * 0.03, latency, "200", 0.0, 1))
    return samples


def test_recovery_counts_to_the_last_abnormal_bin_and_settled_to_the_first_calm_second() -> None:
    # slow for the first 0.3 s, then one stray slow bin at 4.2 s
    samples = _recovery_samples({0, 1, 2, 42})
    assert recovery_s(samples, 10.0, 5.0, 0.003) == 4.3
    assert settled_s(samples, 10.0, 5.0, 0.003) == (0.3, 4)


def test_settled_needs_a_whole_calm_second() -> None:
    # abnormal every 0.9 s: never ten normal bins in a row
    samples = _recovery_samples(set(range(0, 50, 9)))
    assert settled_s(samples, 10.0, 5.0, 0.003) == (5.0, 6)
    # a refusal makes its bin abnormal whatever the latency
    calm = _recovery_samples(set())
    calm[0] = (10.02, 0.001, "503", 0.0, 1)
    assert recovery_s(calm, 10.0, 5.0, 0.003) == 0.1
    assert settled_s(calm, 10.0, 5.0, 0.003) == (0.1, 1)
