"""The overload benchmark's report: both ports' slowest liveness probe; the recovery, strict,
settled and against the calm control."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.bench_overload import (
    CONTROL_MULTIPLE,
    Schedule,
    _targets_held,
    analyze,
    markdown,
    recovered_s,
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


def _recovery_samples(bad_bins: set[int], end: float = 10.0, bins: int = 50) -> list[Sample]:
    # the overload ends at ``end``; 5 s of recovery in 100 ms bins, 3 answers a bin: 2 ms,
    # or 80 ms in the bins named bad
    samples: list[Sample] = []
    for index in range(bins):
        latency = 0.080 if index in bad_bins else 0.002
        for k in range(3):
            samples.append((end + index * 0.1 + 0.02 + k * 0.03, latency, "200", 0.0, 1))
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


def _flags(bad_bins: set[int]) -> list[bool]:
    return [index in bad_bins for index in range(50)]


# a calm control of the kind measured: a few isolated bins in 5 s
STRAYS = {12, 26, 41}


def test_stray_bins_within_the_controls_are_not_taken_for_a_slow_recovery() -> None:
    samples = _recovery_samples(STRAYS)
    assert recovery_s(samples, 10.0, 5.0, 0.003) == 4.2  # strict: the last stray
    assert recovered_s(_flags(STRAYS), 3, 1, recovery_phase_s=5.0) == 0.0
    # a pair, where calm traffic had pairs too
    assert recovered_s(_flags({12, 33, 34}), 3, 2, recovery_phase_s=5.0) == 0.0
    # more strays than calm traffic gave: recovered once the rest are within its count
    assert recovered_s(_flags(STRAYS), 1, 1, recovery_phase_s=5.0) == 2.7
    # a control with none forgives none: the strict figure
    assert recovered_s(_flags(STRAYS), 0, 0, recovery_phase_s=5.0) == 4.2


def test_a_slow_recovery_is_caught_whatever_the_control_allows() -> None:
    # abnormal for the first 2 s, then strays: the 2 s stand
    slow = set(range(20)) | {26, 41}
    assert recovered_s(_flags(slow), 3, 1, recovery_phase_s=5.0) == 2.0
    assert recovered_s(_flags(slow), 50, 2, recovery_phase_s=5.0) == 2.0
    # a run longer than the control's counts whole, never cut down to the allowed length
    assert recovered_s(_flags({0, 1, 2, 3, 4}), 5, 2, recovery_phase_s=5.0) == 0.5
    # two in a row late, where calm traffic had only single bins: recovered after them
    assert recovered_s(_flags({12, 33, 34}), 3, 1, recovery_phase_s=5.0) == 3.5
    # still abnormal at the end: the whole phase
    assert recovered_s(_flags({47, 48, 49}), 3, 2, recovery_phase_s=5.0) == 5.0
    # every other bin for 2 s (no two in a row): only as many bins as the control's are
    # forgiven, the earlier ones count
    alternating = set(range(0, 20, 2))
    assert recovered_s(_flags(alternating), 3, 1, recovery_phase_s=5.0) == 1.3
    with pytest.raises(ValueError, match="must be >= 0"):
        recovered_s(_flags(STRAYS), -1, 1, recovery_phase_s=5.0)


def _analyzed(
    bad_bins: set[int],
    control_bins: tuple[int, int] | None,
    is_control: bool,
    middle_bad_bins: frozenset[int] = frozenset(),
) -> dict[str, Any]:
    # 1 s calm, 10 s middle (at 4 ms, or the control's calm traffic), 5 s after
    schedule = Schedule(calm_s=1.0, phase_s=10.0, recovery_s=5.0)
    calm: list[Sample] = [(k * 0.01, 0.002, "200", 0.0, 1) for k in range(100)]
    middle = _recovery_samples(set(middle_bad_bins), end=1.0, bins=100)
    if not is_control:
        middle = [(t, 0.004, status, lag, port) for t, _, status, lag, port in middle]
    samples = calm + middle + _recovery_samples(bad_bins, end=11.0)
    row = analyze(samples, [], 1.0, schedule, control_bins, is_control)
    row.update(multiple=CONTROL_MULTIPLE if is_control else 2.0, control=is_control,
               server="gateway-admission", capacity=1.0, loadavg_1m_before=1.0,
               cores={"others_on_cpu0": 0.0})  # fmt: skip
    return row


def test_the_control_and_the_overload_are_judged_by_the_same_bins() -> None:
    # calm traffic with 12 abnormal bins in 15 s: 4 a phase of 5 s, runs of 2 at most
    middle = frozenset({5, 33, 34, 50, 61, 80, 81, 95})
    control = _analyzed(STRAYS | {27}, None, is_control=True, middle_bad_bins=middle)
    assert control["abnormal_bins_after"] == 4
    assert control["abnormal_per_s_after"] == 0.8
    assert control["abnormal_bin_starts_s"] == [1.2, 2.6, 2.7, 4.1]
    assert (control["abnormal_bins_middle"], control["abnormal_per_s_middle"]) == (8, 0.8)
    assert (control["recovery_s"], control["settled_s"], control["recovered_s"]) == (4.2, 0.0, 0.0)
    assert (control["control_allowance_bins"], control["control_longest_run"]) == (4, 2)
    bins = (control["control_allowance_bins"], control["control_longest_run"])
    slow = _analyzed(set(range(15)) | {30}, bins, is_control=False)
    assert (slow["recovery_s"], slow["settled_s"], slow["recovered_s"]) == (3.1, 1.5, 1.5)
    assert (slow["control_allowance_bins"], slow["control_longest_run"]) == (4, 2)
    assert "abnormal_bins_middle" not in slow
    strays = _analyzed({5, 27, 44}, bins, is_control=False)
    assert (strays["recovery_s"], strays["recovered_s"]) == (4.5, 0.0)
    # a control quiet but for its phase after: its 4 bins are spread over 15 s, so it allows 1
    quiet = _analyzed(STRAYS | {27}, None, is_control=True)
    assert (quiet["control_allowance_bins"], quiet["control_longest_run"]) == (1, 2)
    assert quiet["recovered_s"] == 2.8  # judged by the same rule: its last bin is forgiven
    # without a control there is no figure against it; the strict target still judges
    alone = _analyzed({5, 27, 44}, None, is_control=False)
    assert alone["recovered_s"] is None
    held = _targets_held({**alone, "liveness_max_ms": 1.0, "liveness_failed": 0})
    assert (held["recovery"], held["recovery_vs_control"]) == (False, None)
    held = _targets_held({**strays, "liveness_max_ms": 1.0, "liveness_failed": 0})
    assert (held["recovery"], held["recovery_vs_control"]) == (False, True)
    report = summarize([control, slow, strays])
    assert set(report) == {"gateway-admission@control", "gateway-admission@2.0x"}
    assert "targets_held" not in report["gateway-admission@control"]
    assert report["gateway-admission@2.0x"]["recovered_s"] == {"median": 0.75, "runs": [1.5, 0.0]}
    assert "| 0.8 (1.5, 0.0) |" in markdown(report)
