"""The overload benchmark's report: both ports' slowest liveness probe."""

from __future__ import annotations

from typing import Any

from loadtests.bench_overload import Schedule, analyze, markdown, summarize
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
