from __future__ import annotations

import time
import tracemalloc
from typing import Any

import numpy as np
import orjson

from monitors.batch import MAX_RECORD_ROWS, Part, RecordBatch, served_primaries, well_formed
from monitors.profile import build_profile
from monitors.schema import decode_columns, decode_records, encode_records
from monitors.windows import Pane, Summary, Windows, WindowSpec, summarize

RNG = np.random.default_rng(5)
PROFILE = build_profile(
    {
        "a": RNG.normal(size=400),
        "b": RNG.normal(size=400),
        "colour": np.array(RNG.choice(["red", "blue", "1"], 400), dtype=object),
        "prediction:label": RNG.integers(0, 2, 400).astype(float),
    },
    categorical={"colour"},
)


def stream(n: int, seed: int) -> list[dict[str, Any]]:
    """Records of two versions of a model, of 1-3 rows, some shadow or invalid, some lacking a
    feature or holding None, text or numbers where categories go."""
    rng = np.random.default_rng(seed)
    records: list[dict[str, Any]] = []
    for i in range(n):
        rows = int(rng.choice([1, 1, 2, 3]))
        record: dict[str, Any] = {
            "schema_version": 2, "request_id": f"r{i}", "time": 100.0 + i * 0.1 + rng.normal(0, 0.5),
            "model": "m", "version": "2" if i % 4 == 3 else "1", "role": "primary", "rows": rows,
            "status": "ok", "latency_s": 0.001,
        }  # fmt: skip
        if rng.random() < 0.05:
            record["role"] = "shadow"
        if rng.random() < 0.05:
            record.update(status="invalid", error="bad input")
            records.append(record)
            continue
        features: dict[str, Any] = {
            "a": rng.normal(size=rows).tolist(),
            "colour": [str(rng.choice(["red", "blue", "green"])) for _ in range(rows)],
        }
        if rng.random() < 0.9:
            features["b"] = rng.normal(size=rows).astype(np.float32)
        if rng.random() < 0.05:
            features["a"][0] = None
        if rng.random() < 0.05:
            features["colour"] = [1] * rows
        record["features"] = features
        if rng.random() < 0.95:
            record["outputs"] = {"label": rng.integers(0, 2, rows)}
        records.append(record)
    return records


def messages(records: list[dict[str, Any]], seed: int) -> list[bytes]:
    """Messages of 1-120 records, some as version 1 lines."""
    rng = np.random.default_rng(seed)
    out, start = [], 0
    while start < len(records):
        chunk = records[start : start + int(rng.integers(1, 120))]
        if rng.random() < 0.3:
            out.append(b"\n".join(orjson.dumps({**r, "schema_version": 1}, option=orjson.OPT_SERIALIZE_NUMPY) for r in chunk))  # fmt: skip
        else:
            out.append(encode_records(chunk))  # type: ignore[arg-type]
        start += len(chunk)
    return out


def summaries(closed: list[tuple[list[Pane], Summary]]) -> list[Any]:
    return [
        (
            [(p.key, p.first_offset, p.last_offset, p.start_time, p.end_time) for p in panes],
            s.rows, {k: v.tolist() for k, v in s.bins.items()}, s.missing, s.categories,
        )
        for panes, s in closed
    ]  # fmt: skip


def test_windows_from_columns_are_the_windows_from_decoded_records() -> None:
    specs = [WindowSpec("count", 240, 240), WindowSpec("count", 300, 100)]
    specs += [WindowSpec("time", 20.0, 10.0, 2.0), WindowSpec("time", 5.0, 5.0)]
    for seed in range(3):
        stream_messages = messages(stream(2500, seed), seed)
        for spec in specs:
            columnar = {v: Windows(spec, PROFILE) for v in "12"}
            decoded = {v: Windows(spec, PROFILE) for v in "12"}
            got: dict[str, list[Any]] = {"1": [], "2": []}
            want: dict[str, list[Any]] = {"1": [], "2": []}
            for poll in range(0, len(stream_messages), 7):  # consumer polls of 7 messages
                parts: dict[str, list[Part]] = {"1": [], "2": []}
                records: dict[str, tuple[list[dict[str, Any]], list[int]]] = {
                    "1": ([], []), "2": ([], [])
                }  # fmt: skip
                for offset in range(poll, min(poll + 7, len(stream_messages))):
                    message = stream_messages[offset]
                    for (_, version), part in served_primaries(decode_columns(message), offset)[0].items():  # fmt: skip
                        parts[version].append(part)
                    for r in decode_records(message):
                        if r["role"] == "primary" and r["status"] == "ok":
                            records[r["version"]][0].append(dict(r))
                            records[r["version"]][1].append(offset)
                for v in "12":
                    batch = RecordBatch.from_parts(PROFILE, parts[v])
                    got[v] += summaries(columnar[v].add_batch(batch))
                    want[v] += summaries(decoded[v].add(*records[v]))
            for v in "12":
                assert got[v] == want[v], (seed, spec, v)
                assert len(got[v]) > 1
                assert columnar[v].to_state() == decoded[v].to_state()


def test_served_primaries_groups_by_version_and_counts_the_others_by_reason() -> None:
    records = stream(200, 9)
    parts, others = served_primaries(decode_columns(encode_records(records)), 42)  # type: ignore[arg-type]
    served = [r for r in records if r["role"] == "primary" and r["status"] == "ok"]
    shadows = sum(r["role"] == "shadow" for r in records)
    invalid = sum(r["role"] == "primary" and r["status"] == "invalid" for r in records)
    assert shadows
    assert invalid
    assert others == {"shadow": shadows, "invalid": invalid}
    assert sum(others.values()) == len(records) - len(served)
    assert set(parts) == {("m", "1"), ("m", "2")}
    assert sum(len(p) for p in parts.values()) == len(served)
    assert all((p.offsets == 42).all() for p in parts.values())


def test_a_record_without_a_feature_counts_its_rows_as_missing() -> None:
    records = [
        {"time": 1.0, "rows": 2, "features": {"a": [0.1, 0.2], "b": [1.0, None]}},
        {"time": 2.0, "rows": 3, "features": {"a": [0.3, 0.4, 0.5], "colour": ["red"] * 3}},
    ]
    batch = RecordBatch.from_records(PROFILE, records, [0, 1])
    b = batch.columns["b"]
    assert b.values[0] == 1.0
    assert np.isnan(b.values[1])
    assert b.starts.tolist() == [0, 2, 2]
    assert b.absent is not None
    assert b.absent.tolist() == [0, 3]  # counted, not made into values
    colour = batch.columns["colour"]
    assert colour.absent is not None
    assert colour.absent.tolist() == [2, 0]  # missing for every kind
    assert colour.values.tolist() == ["red"] * 3
    assert batch.columns["a"].absent is None
    assert batch.columns["prediction:label"].values.tolist() == []
    assert batch.columns["prediction:label"].absent is None  # an output is not padded
    second = batch.take(np.array([1]))
    assert second.columns["a"].values.tolist() == [0.3, 0.4, 0.5]
    assert second.columns["b"].missing_absent() == 3
    assert batch.slice(1, 2).columns["colour"].values.tolist() == ["red"] * 3
    summary = summarize(batch, PROFILE)
    assert summary.missing == {"a": 0, "b": 4, "colour": 2, "prediction:label": 0}


def with_nulls(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with a null per row for each profiled feature they lack: what the monitor
    made of a missing feature when it padded it."""
    out = []
    for record in records:
        features = dict(record.get("features", {}))
        for name in ("a", "b", "colour"):
            features.setdefault(name, [None] * record["rows"])
        out.append({**record, "features": features})
    return out


def test_a_missing_feature_makes_the_windows_that_nulls_in_its_place_make() -> None:
    # The windows' figures (missing counts and rates, pane bounds by count, bins) as they were
    # when a missing feature was padded with a value per row, now that it is counted instead.
    rng = np.random.default_rng(12)
    records = stream(1500, 12)
    for record in records:
        record.update(role="primary", status="ok", version="1")
        if rng.random() < 0.1:  # some features absent, some requests of many rows
            rows = int(rng.integers(0, 700))
            kept = {k: v for k, v in record.get("features", {}).items() if rng.random() < 0.5}
            record.update(rows=rows, features={k: [v[0]] * rows for k, v in kept.items()})
            if "outputs" in record:
                record["outputs"] = {"label": [int(record["outputs"]["label"][0])] * rows}
        if rng.random() < 0.05:
            record.pop("features", None)
    specs = [WindowSpec("count", 240, 240), WindowSpec("count", 300, 100)]
    specs += [WindowSpec("time", 20.0, 10.0, 2.0)]
    for spec in specs:
        got, want = Windows(spec, PROFILE), Windows(spec, PROFILE)
        closed: tuple[list[Any], list[Any]] = ([], [])
        for start in range(0, len(records), 97):
            chunk = records[start : start + 97]
            message = decode_columns(encode_records(chunk))  # type: ignore[arg-type]
            parts = list(served_primaries(message, start)[0].values())
            closed[0].extend(summaries(got.add_batch(RecordBatch.from_parts(PROFILE, parts))))
            padded = [dict(r) for r in decode_records(encode_records(with_nulls(chunk)))]  # type: ignore[arg-type]
            closed[1].extend(summaries(want.add(padded, [start] * len(chunk))))
        assert closed[0] == closed[1], spec
        assert len(closed[0]) > 5
        assert got.to_state() == want.to_state()


def test_a_record_of_the_most_rows_without_features_costs_no_row_by_row_work() -> None:
    # Before, one such record (a 300-byte message) was padded with a missing value per row of
    # every feature: 4.2 GB and 26 s of CPU, again after every restart.
    ordinary = stream(20, 13)
    for record in ordinary:
        record.update(role="primary", status="ok", version="1", time=1000.0)
    poison = {k: v for k, v in ordinary[0].items() if k not in ("features", "outputs")}
    poison["rows"] = MAX_RECORD_ROWS
    records: list[Any] = [poison, *ordinary[:10], poison, poison, *ordinary[10:]]
    message = encode_records(records)
    rows = 3 * MAX_RECORD_ROWS + sum(r["rows"] for r in ordinary)
    missing = {"a": 0, "b": 0, "colour": 0}
    for record in ordinary:
        for name in missing:
            values = record.get("features", {}).get(name)
            missing[name] += record["rows"] if values is None else sum(v is None for v in values)
    slide = 1 << 21
    for spec in (WindowSpec("count", slide, slide), WindowSpec("time", 60.0, 60.0)):
        tracemalloc.start()
        cpu = time.process_time()
        parts, _ = served_primaries(decode_columns(message), 0)
        windows = Windows(spec, PROFILE)
        closed = windows.add_batch(RecordBatch.from_parts(PROFILE, list(parts.values())))
        cpu = time.process_time() - cpu
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 50e6, (spec, peak)
        assert cpu < 1.0, (spec, cpu)
        assert len(closed) == (rows // slide if spec.by == "count" else 0)
        total = Summary()
        for pane in [*(panes[0] for panes, _ in closed), *windows.open.values()]:
            total.add(pane.summary)
        assert total.rows == rows
        for name, count in missing.items():
            assert total.missing[name] == 3 * MAX_RECORD_ROWS + count, name
        assert total.missing["prediction:label"] == 0  # outputs are not padded


def test_a_record_with_fewer_values_than_rows_is_counted_as_it_is() -> None:
    # Its values count as they are (none made up as missing, none dropped), its rows count
    # towards the count windows' size, and its values go to the panes in proportion to them.
    features = {"a": [0.1, 0.2, None, 0.4], "b": [0.5] * 10, "colour": ["red"]}
    record: dict[str, Any] = {"time": 1.0, "rows": 10, "features": features}
    windows = Windows(WindowSpec("count", 3, 3), PROFILE)
    closed = windows.add([record], [0])
    counted = [
        (s.rows, int(s.bins["a"].sum()), s.missing["a"], int(s.bins["b"].sum()), s.categories["colour"])
        for _, s in closed
    ]  # fmt: skip
    # "a": values 0, 1, 2 and 3 of 4 (4 * 3 // 10 = 1, 4 * 6 // 10 = 2, 4 * 9 // 10 = 3)
    assert counted == [(3, 1, 0, 3, {}), (3, 1, 0, 3, {}), (3, 0, 1, 3, {})]
    (rest,) = windows.open.values()
    assert rest.summary.rows == 1
    assert (int(rest.summary.bins["a"].sum()), rest.summary.missing["a"]) == (1, 0)
    assert rest.summary.categories["colour"] == {"red": 1}


def test_malformed_records_are_counted_and_the_rest_of_their_message_is_read() -> None:
    records = stream(40, 3)
    for record in records:
        record.update(role="primary", status="ok", version="1")
    poison: list[dict[str, Any]] = [
        {"rows": "x"}, {"rows": -5}, {"rows": 1 << 40}, {"rows": True}, {"rows": 1.5},
        {"time": "now"}, {"time": None}, {"model": ["m"]}, {"model": 5}, {"version": {"v": 1}},
        {"role": "primary", "status": "a status no gateway writes"},
    ]  # fmt: skip
    for k, change in enumerate(poison):
        records[3 * k + 1].update(change)
    for lines in (False, True):  # version 2, and version 1 lines
        numpy = orjson.OPT_SERIALIZE_NUMPY
        line = [orjson.dumps({**r, "schema_version": 1}, option=numpy) for r in records]
        message = b"\n".join(line) if lines else encode_records(records)  # type: ignore[arg-type]
        parts, others = served_primaries(decode_columns(message), 7)
        assert others == {"malformed": len(poison)}
        assert list(parts) == [("m", "1")]
        batch = RecordBatch.from_parts(PROFILE, list(parts.values()))
        assert len(batch) == len(records) - len(poison)
        assert batch.rows.dtype == np.int64
        assert batch.times.dtype == np.float64


def test_a_time_far_ahead_is_malformed_not_the_windows_new_clock() -> None:
    # Before, one record stamped in the far future moved the time windows' watermark there for
    # good: every record after it counted late and dropped. An hour of clock skew is allowed.
    now = time.time()
    records = stream(30, 4)
    for i, record in enumerate(records):
        record.update(role="primary", status="ok", version="1", time=now - 30 + i)
    records[5]["time"] = 1e308
    records[9]["time"] = now + 2 * 3600.0
    records[12]["time"] = now + 1800.0  # within the skew allowed: kept
    parts, others = served_primaries(decode_columns(encode_records(records)), 0)  # type: ignore[arg-type]
    assert others == {"malformed": 2}
    windows = Windows(WindowSpec("time", 60.0, 60.0), PROFILE)
    windows.add_batch(RecordBatch.from_parts(PROFILE, list(parts.values())))
    assert windows.watermark == now + 1800.0
    # the records logged after the one half an hour ahead are late (whatever the polls)
    late = sum(r["rows"] for r in records[13:])
    assert windows.late_rows == late
    later = stream(5, 6)
    for i, record in enumerate(later):
        record.update(role="primary", status="ok", version="1", time=now + 1860 + i)
    windows.add_batch(RecordBatch.from_records(PROFILE, later, list(range(30, 35))))
    assert windows.late_rows == late


def test_numeric_values_that_are_not_numbers_count_as_missing() -> None:
    odd: list[Any] = ["", "abc", {"x": 1}, [1, 2], None, "2.5", 3]
    records = [
        {"time": 1.0, "rows": len(odd), "features": {"a": odd, "colour": ["red"] * len(odd)}},
        {"time": 2.0, "rows": 2, "features": {"a": [[1, 2], [3, 4]], "colour": [{"x": 1}, [1]]}},
    ]
    batch = RecordBatch.from_records(PROFILE, records, [0, 1])
    a = batch.columns["a"].values
    assert a.shape == (len(odd) + 2,)
    assert np.isnan(a[:5]).all()
    assert a[5:7].tolist() == [2.5, 3.0]
    assert np.isnan(a[7:]).all()  # lists of one length are not a matrix of values
    windows = Windows(WindowSpec("count", 9, 9), PROFILE)
    ((_, summary),) = windows.add_batch(batch)
    assert summary.rows == 9


def test_a_time_before_the_epoch_is_malformed_and_the_windows_go_on() -> None:
    # Before, a record stamped -1e300 (a default of minus infinity written as a number) opened a
    # pane whose key less the window's panes is the key itself in floats: closing it emptied the
    # closed panes and raised IndexError out of the consumer, on the same message after every
    # restart.
    now = time.time()
    records = stream(20, 8)
    for i, record in enumerate(records):
        record.update(role="primary", status="ok", version="1", time=now - 30 + i)
    records[0]["time"] = -1e300
    records[3]["time"] = -1.0
    parts, others = served_primaries(decode_columns(encode_records(records)), 0)  # type: ignore[arg-type]
    assert others == {"malformed": 2}
    assert well_formed("m", "1", 1, 0, now)
    windows = Windows(WindowSpec("time", 60.0, 1.0), PROFILE)
    closed = windows.add_batch(RecordBatch.from_parts(PROFILE, list(parts.values())))
    assert windows.late_rows == 0
    assert closed == []  # the window's 60 s are not all seen yet
