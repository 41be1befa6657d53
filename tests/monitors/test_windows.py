from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np

from monitors.decision import Decider
from monitors.detectors import bin_counts
from monitors.evaluate import DetectorConfig, evaluate
from monitors.windows import Windows, WindowSpec
from tests.monitors._records import NAMES, demo_profile, records, sample

PROFILE = demo_profile()


def test_count_windows_tumble_and_slide() -> None:
    rng = np.random.default_rng(0)
    batch = records(sample(rng, 1000))
    tumbling = Windows(WindowSpec("count", 300, 300), PROFILE)
    closed = tumbling.add(batch, list(range(1000)))
    assert [w[1].rows for w in closed] == [300, 300, 300]
    sliding = Windows(WindowSpec("count", 400, 100), PROFILE)
    closed = sliding.add(batch, list(range(1000)))
    assert [w[1].rows for w in closed] == [400] * 7
    assert [w[0][0].first_offset for w in closed] == [0, 100, 200, 300, 400, 500, 600]


def test_time_windows_close_after_lateness_and_drop_late_records() -> None:
    rng = np.random.default_rng(2)
    batch = records(sample(rng, 600), start_time=0.0, step_s=0.1)  # 60 s of traffic
    windows = Windows(WindowSpec("time", 20.0, 10.0, lateness_s=5.0), PROFILE)
    closed = windows.add(batch, list(range(600)))
    spans = [(w[0][0].key, w[0][-1].key) for w in closed]
    assert spans == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]  # 50-60 s still open
    late = records(sample(rng, 5), start_time=1.0, step_s=0.1, prefix="late")
    windows.add(late, list(range(600, 605)))
    assert windows.late_rows == 5


def test_evaluation_flags_the_shifted_feature_only() -> None:
    rng = np.random.default_rng(3)
    config = DetectorConfig(min_rows=200)
    windows = Windows(WindowSpec("count", 1000, 1000), PROFILE)
    ((_, calm),) = windows.add(records(sample(rng, 1000)), list(range(1000)))
    ok = evaluate(
        calm, PROFILE, config, model="m", version="1", window_id="w1", start_time=0, end_time=1
    )
    assert ok.status == "ok", ok.drifted_features
    windows = Windows(WindowSpec("count", 1000, 1000), PROFILE)
    ((_, shifted),) = windows.add(
        records(sample(rng, 1000, shift_sigma=1.0, feature=3)), list(range(1000))
    )
    bad = evaluate(
        shifted, PROFILE, config, model="m", version="1", window_id="w2", start_time=0, end_time=1
    )
    assert bad.status == "drift"
    assert "mean area" in bad.drifted_features
    small = evaluate(shifted, PROFILE, DetectorConfig(min_rows=5000), model="m", version="1",
                     window_id="w3", start_time=0, end_time=1)  # fmt: skip
    assert small.status == "insufficient"


def test_hysteresis_then_cooldown() -> None:
    decider = Decider(consecutive=2, cooldown_windows=3)
    statuses = ["drift", "ok", "drift", "drift", "drift", "drift", "drift", "drift", "drift"]
    fired = [decider.observe("m/1", s, {"id": i}) for i, s in enumerate(statuses)]
    assert fired == [False, False, False, True, False, False, False, False, True]
    assert decider.states["m/1"].episode == [{"id": 7}, {"id": 8}]  # the windows that fired


def test_count_windows_hold_their_size_when_requests_carry_several_rows() -> None:
    rng = np.random.default_rng(4)
    sizes = rng.integers(1, 700, 60)  # some requests larger than a pane
    rows = sample(rng, int(sizes.sum()))
    batch, start = [], 0
    for i, size in enumerate(sizes):
        chunk = rows[start : start + size]
        batch.append({
            "time": float(i), "rows": int(size),
            "features": {name: chunk[:, j].tolist() for j, name in enumerate(NAMES)},
            "outputs": {"label": (chunk[:, 0] > 14).astype(int).tolist()},
        })  # fmt: skip
        start += size
    for spec in (WindowSpec("count", 1000, 1000), WindowSpec("count", 1000, 250)):
        windows = Windows(spec, PROFILE)
        closed = []
        for i in range(0, len(batch), 7):  # several polls
            closed += windows.add(batch[i : i + 7], [i] * len(batch[i : i + 7]))
        assert [summary.rows for _, summary in closed] == [1000] * len(closed)
        step = int(spec.slide)
        for k, (_, summary) in enumerate(closed):
            expected = rows[k * step : k * step + 1000, 0]
            edges = np.asarray(PROFILE.features[NAMES[0]].bin_edges)
            assert summary.bins[NAMES[0]].tolist() == bin_counts(expected, edges).tolist()
            assert int(summary.bins["prediction:label"].sum()) == 1000
        pending = sum(p.summary.rows for p in windows.open.values())
        assert len(closed) * step + pending + (spec.panes - 1) * step == len(rows)


def _time_windows_by_hand(
    times: np.ndarray, values: np.ndarray, size: float, slide: float, lateness_s: float
) -> tuple[list[tuple[float, ...]], int]:
    """The textbook rule, one record at a time in log order: a record is late when the latest
    time before it, less the lateness, has passed its pane's end; when a pane closes, its
    window is the records of the ``size / slide`` slides up to it, once the first pane closed
    is among them. Returns (each window's values, sorted), late records."""
    count = round(size / slide)
    panes: dict[float, list[float]] = {}
    closed: list[tuple[float, list[float]]] = []
    windows: list[tuple[float, ...]] = []
    watermark, late, first = -np.inf, 0, None
    for time, value in zip(times.tolist(), values.tolist(), strict=True):
        key = float(np.floor(time / slide))
        if (key + 1) * slide <= watermark:
            late += 1
            continue
        panes.setdefault(key, []).append(value)
        watermark = max(watermark, time - lateness_s)
        for done in sorted(k for k in panes if (k + 1) * slide <= watermark):
            first = done if first is None else first
            closed = [(k, p) for k, p in closed if k > done - count] + [(done, panes.pop(done))]
            if done - first + 1 >= count:
                windows.append(tuple(sorted(v for _, pane in closed for v in pane)))
    return windows, late


def test_time_windows_drop_the_same_late_records_whatever_the_polls() -> None:
    rng = np.random.default_rng(8)
    times = np.arange(400) * 0.5 + rng.normal(0, 3, 400)  # out of order, some past lateness
    times[::23] = np.floor(times[::23] / 10) * 10  # some exactly on a pane's start
    values = sample(rng, 400)
    batch = records(values)
    for record, time in zip(batch, times.tolist(), strict=True):
        record["time"] = time
    expected, late = _time_windows_by_hand(times, values[:, 0], 20.0, 10.0, 2.0)
    assert late > 10
    assert len(expected) > 10
    for polls in ([400], [1] * 400, rng.multinomial(400, np.ones(9) / 9).tolist()):
        windows = Windows(WindowSpec("time", 20.0, 10.0, lateness_s=2.0), PROFILE)
        closed, start = [], 0
        for count in polls:
            closed += windows.add(batch[start : start + count], range(start, start + count))
            start += count
        assert windows.late_rows == late, polls
        edges = np.asarray(PROFILE.features[NAMES[0]].bin_edges)
        got = [summary.bins[NAMES[0]].tolist() for _, summary in closed]
        assert got == [bin_counts(np.asarray(w), edges).tolist() for w in expected], polls


def test_sliding_time_windows_hold_what_their_span_holds_when_slides_are_empty() -> None:
    # Bursts of traffic every other slide: before, a slide without records reset the window,
    # so sliding windows never filled and none was evaluated (tumbling ones were).
    rng = np.random.default_rng(11)
    times = np.concatenate([burst * 20.0 + rng.uniform(0, 8, 30) for burst in range(12)])
    values = sample(rng, len(times))
    batch = records(values)
    for record, time in zip(batch, times.tolist(), strict=True):
        record["time"] = time
    expected, late = _time_windows_by_hand(times, values[:, 0], 40.0, 10.0, 0.0)
    assert late == 0
    assert [len(w) for w in expected] == [60] * 9  # two bursts in every 40 s
    edges = np.asarray(PROFILE.features[NAMES[0]].bin_edges)
    spec = WindowSpec("time", 40.0, 10.0)
    for polls in ([len(batch)], [7] * 52):
        windows, closed, start = Windows(spec, PROFILE), [], 0
        for count in polls:
            closed += windows.add(batch[start : start + count], range(start, start + count))
            start += count
            if start == 154:  # a restart from the snapshot, with empty slides in the window
                windows = Windows.restore(spec, PROFILE, json.loads(json.dumps(windows.to_state())))
        got = [summary.bins[NAMES[0]].tolist() for _, summary in closed]
        assert got == [bin_counts(np.asarray(w), edges).tolist() for w in expected], polls
        assert [[p.key for p in panes] for panes, _ in closed][:2] == [[2.0, 4.0], [4.0, 6.0]]


def test_a_pane_saved_before_the_distances_beyond_the_edges_were_kept_restores() -> None:
    rng = np.random.default_rng(9)
    spec = WindowSpec("count", 200, 100)
    windows = Windows(spec, PROFILE)
    windows.add(records(sample(rng, 150)), list(range(150)))
    state = windows.to_state()
    for pane in (*state["closed"], *state["open"]):
        assert set(pane["beyond"]) == set(pane["bins"])
        del pane["beyond"]
    restored = Windows.restore(spec, PROFILE, state)
    ((_, summary),) = restored.add(records(sample(rng, 50, shift_sigma=50.0)), range(150, 200))
    assert summary.rows == 200
    assert summary.beyond[NAMES[0]][0] == 0.0
    assert summary.beyond[NAMES[0]][1] > 0.0  # the rows after the restart, far above


def _run(
    spec: WindowSpec, batch: list[dict[str, Any]], cuts: list[int], restarts: set[int]
) -> tuple[list[Any], int]:
    """The windows that close (what each holds of the first feature) and the late rows, for
    the records polled in runs cut at ``cuts``, restarting from a snapshot at ``restarts``."""
    windows, closed = Windows(spec, PROFILE), []
    for a, b in itertools.pairwise([0, *cuts, len(batch)]):
        if a in restarts:
            windows = Windows.restore(spec, PROFILE, json.loads(json.dumps(windows.to_state())))
        closed += [
            ([p.key for p in panes], summary.rows, summary.bins[NAMES[0]].tolist(),
             summary.missing[NAMES[0]], summary.beyond[NAMES[0]].tolist())
            for panes, summary in windows.add(batch[a:b], range(a, b))
        ]  # fmt: skip
    return closed, windows.late_rows


def test_windows_are_the_same_whatever_the_polls_and_restarts() -> None:
    rng = np.random.default_rng(10)
    sizes = rng.integers(0, 6, 300)  # requests of 0 to 5 rows
    rows = sample(rng, int(sizes.sum()), shift_sigma=1.5)  # some beyond the reference's range
    rows[rng.random(rows.shape) < 0.05] = np.nan
    times = np.arange(300) * 0.5 + rng.normal(0, 2, 300)  # out of order
    batch, start = [], 0
    for i, size in enumerate(sizes):
        chunk = rows[start : start + size]
        batch.append({
            "time": float(times[i]), "rows": int(size),
            "features": {name: [None if np.isnan(v) else v for v in chunk[:, j].tolist()]
                         for j, name in enumerate(NAMES)},
            "outputs": {"label": (chunk[:, 0] > 14).astype(int).tolist()},
        })  # fmt: skip
        start += size
    for spec in (WindowSpec("count", 120, 40), WindowSpec("time", 20.0, 5.0, lateness_s=2.0)):
        one_pass = _run(spec, batch, [], set())
        assert len(one_pass[0]) > 5
        for _ in range(5):
            cuts = sorted(rng.choice(np.arange(1, len(batch)), 12, replace=False).tolist())
            assert _run(spec, batch, cuts, set(cuts[::3])) == one_pass, spec
