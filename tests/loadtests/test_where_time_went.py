"""Where an overload run's time went: the generator's send lag, and its requests joined with
the gateway's own timings (``LOADTESTS_TIMINGS_FILE``) connection by connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.datasets import load_breast_cancer

from gateway.http.server import TIMINGS_ENV
from loadtests.bench_overload import (
    PARTS,
    Schedule,
    analyze,
    join_timings,
    server_timings,
    where_time_went,
)
from loadtests.openloop import Sample, run_phases_async
from tests._support import start_gateway

BEGIN = 100.0


def _timings(*rows: tuple[int, float, float, int]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def test_requests_are_joined_in_order_on_each_connection() -> None:
    # port 7: two answered; port 8: one answered, then one the client gave up on (unanswered)
    samples: list[Sample] = [
        (0.0, 0.010, "200", 0.001, 7),
        (0.5, 0.004, "503", 0.002, 7),
        (0.1, 0.020, "200", 0.000, 8),
        (0.2, None, "TimeoutError", 0.003, 8),
        (0.3, None, "TimeoutError", None, 0),  # never written: no connection
    ]
    timings = _timings(
        (7, BEGIN - 5.0, BEGIN - 4.9, 200),  # an earlier run's connection on the same port
        (7, BEGIN + 0.5 + 0.002 + 0.0005, BEGIN + 0.5035, 503),
        (7, BEGIN + 0.001 + 0.001, BEGIN + 0.007, 200),
        (8, BEGIN + 0.0001, BEGIN + 0.019, 200),
    )
    matched, unmatched = join_timings(samples, BEGIN, timings)
    assert unmatched == 0
    parts = {(offset, status): p for offset, status, p in matched}
    assert set(parts) == {(0.0, "200"), (0.5, "503"), (0.1, "200")}
    lag, to_gateway, in_gateway, back = parts[(0.0, "200")]
    assert lag == pytest.approx(0.001)
    assert to_gateway == pytest.approx(0.001)
    assert in_gateway == pytest.approx(0.005)
    assert back == pytest.approx(0.003)
    for offset, status, p in matched:
        latency = next(s[1] for s in samples if s[0] == offset and s[2] == status)
        assert sum(p) == pytest.approx(latency)


def test_a_connection_whose_statuses_disagree_is_left_out() -> None:
    samples: list[Sample] = [(0.0, 0.010, "200", 0.001, 7), (0.1, 0.010, "200", 0.001, 9)]
    timings = _timings(
        (7, BEGIN + 0.002, BEGIN + 0.003, 503), (9, BEGIN + 0.102, BEGIN + 0.103, 200)
    )
    matched, unmatched = join_timings(samples, BEGIN, timings)
    assert unmatched == 1
    assert [(offset, status) for offset, status, _ in matched] == [(0.1, "200")]


def test_the_report_splits_answered_and_refused_within_the_window() -> None:
    samples: list[Sample] = []
    rows = []
    for i in range(200):
        offset = i * 0.01
        status = "200" if i % 2 else "503"
        samples.append((offset, 0.004, status, 0.001, 1000 + i))
        rows.append((1000 + i, BEGIN + offset + 0.0015, BEGIN + offset + 0.0025, int(status)))
    report = where_time_went(samples, BEGIN, _timings(*rows), (0.5, 1.5))
    assert report["joined"] == 200
    assert report["unmatched"] == 0
    assert report["answered"]["n"] == 50
    assert report["refused"]["n"] == 50
    answered = report["answered"]
    assert answered["latency"]["p99"] == pytest.approx(4.0)
    assert [answered[p]["p50"] for p in PARTS] == pytest.approx([1.0, 0.5, 1.0, 1.5])
    assert [answered["slowest_1pct_mean"][p] for p in PARTS] == pytest.approx([1.0, 0.5, 1.0, 1.5])


def test_analyze_reports_the_generators_send_lag_in_the_overload_phase() -> None:
    schedule = Schedule(calm_s=1.0, phase_s=1.0, recovery_s=1.0)
    samples: list[Sample] = [
        (0.5, 0.002, "200", 0.5, 1),  # calm: not counted
        (1.1, 0.004, "200", 0.001, 1),
        (1.2, 0.003, "503", 0.003, 1),
        (1.3, None, "TimeoutError", None, 0),
    ]
    row = analyze(samples, [], capacity=1.0, schedule=schedule)
    assert row["send_lag_p50_ms"] == 2.0
    assert row["answered_send_lag_p99_ms"] == 1.0
    assert row["refused_send_lag_p99_ms"] == 3.0


@pytest.mark.e2e
def test_the_gateway_timings_join_every_answered_request(
    demo_registry: Path, tmp_path: Path
) -> None:
    timings_path = tmp_path / "timings.bin"
    config = {
        "registry": {"backend": "local", "root": str(demo_registry), "poll_interval_s": 60},
        "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
    }
    row = load_breast_cancer().data[0].astype(np.float32)
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row.tolist()}]}
    )
    with start_gateway(tmp_path, config, env={TIMINGS_ENV: str(timings_path)}) as gw:
        url = f"{gw.url}/v2/models/breast_cancer/infer"
        result = asyncio.run(run_phases_async(url, body, [(200.0, 1.0)], keep_samples=True))
        timings = server_timings(gw.proc.pid, timings_path)
        again = server_timings(gw.proc.pid, timings_path)
    assert result.statuses == {"200": 200}
    assert result.summary()["send_lag_p99_ms"] is not None
    assert len(again) == 0  # each dump starts over
    assert result.samples is not None
    matched, unmatched = join_timings(result.samples, result.begin, timings)
    assert (len(matched), unmatched) == (200, 0)
    latencies = {s[0]: s[1] for s in result.samples}
    for offset, status, parts in matched:
        assert status == "200"
        send_lag, *after_send = parts
        # the generator may write up to a timer tick early (its sleeps wake on uvloop's
        # millisecond clock, and it sends what is due within 0.5 ms): a lag a little below 0
        assert send_lag > -2e-3
        assert min(after_send) > -1e-4  # one clock: no later part runs backwards
        assert sum(parts) == pytest.approx(latencies[offset], abs=1e-6)
