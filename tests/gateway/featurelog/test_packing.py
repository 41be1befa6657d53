from __future__ import annotations

import numpy as np

from gateway.featurelog import pack_messages
from gateway.featurelog.packing import pack
from monitors.schema import FeatureMatrix, InferenceRecord, decode_records
from tests._log_records import log_record

LIMIT = 1_000_000
record = log_record


def decoded(messages: list[tuple[bytes, bytes, int]]) -> list[InferenceRecord]:
    return [r for _, value, _ in messages for r in decode_records(value)]


def test_small_records_share_messages_of_at_most_100_under_the_bound() -> None:
    records = [record(i, rows=1 + i % 40) for i in range(450)]
    messages = pack_messages([(b"m", r) for r in records], 64 * 1024)
    assert all(len(value) + 1 + 128 <= 64 * 1024 for _, value, _ in messages)
    assert all(count <= 100 for _, _, count in messages)
    assert [r["request_id"] for r in decoded(messages)] == [f"r{i}" for i in range(450)]


def test_a_record_over_the_bound_is_split_by_rows_into_parts_in_order() -> None:
    big = record(1, rows=140_000)
    packed = pack([(b"m", record(0)), (b"m", big), (b"m", record(2))], LIMIT)
    assert (packed.split, packed.cut) == (1, 0)
    assert all(len(value) <= LIMIT for _, value, _ in packed.messages)
    records = decoded(packed.messages)
    assert records[0]["request_id"] == "r0"
    assert records[-1]["request_id"] == "r2"
    parts = records[1:-1]
    assert len(parts) > 40
    assert {p["request_id"] for p in parts} == {"r1"}
    assert [p["part"]["index"] for p in parts] == list(range(len(parts)))
    assert {p["part"]["count"] for p in parts} == {len(parts)}
    assert sum(p["rows"] for p in parts) == 140_000
    first_rows = [p["part"]["first_row"] for p in parts]
    assert first_rows == [sum(p["rows"] for p in parts[:k]) for k in range(len(parts))]
    column = [v for p in parts for v in p["features"]["f3"]]
    assert np.allclose(column, big["features"]["f3"])
    labels = [v for p in parts for v in p["outputs"]["label"]]
    assert labels == (np.arange(140_000) % 2).tolist()


def test_raw_inputs_split_with_their_rows() -> None:
    image = np.arange(50_000 * 8, dtype=np.int64).reshape(50_000, 8)
    raw = record(0, rows=50_000)
    del raw["features"]
    raw["inputs"] = {
        "image": {"datatype": "INT64", "shape": [50_000, 8], "data": image.reshape(-1)}
    }
    parts = decoded(pack_messages([(b"m", raw)], LIMIT))
    assert len(parts) > 1
    assert [part["inputs"]["image"]["shape"][1] for part in parts] == [8] * len(parts)
    data = [v for part in parts for v in part["inputs"]["image"]["data"]]
    assert data == image.reshape(-1).tolist()


def test_a_row_too_large_or_a_huge_routing_key_is_logged_cut_and_flagged() -> None:
    wide = record(0)
    wide["features"] = FeatureMatrix([f"x{j}" for j in range(100_000)], np.ones((1, 100_000)))
    keyed = record(1, routing_key="k" * (1024 * 1024), error="e" * 2000)
    packed = pack([(b"m", wide), (b"m", keyed), (b"m", record(2))], LIMIT)
    assert packed.cut == 2
    first, second, third = decoded(packed.messages)
    assert first["omitted"] == ["features", "outputs"]
    assert "features" not in first
    assert "outputs" not in first
    assert (first["rows"], first["status"]) == (1, "ok")
    assert second["routing_key"] == "k" * 1024
    assert second["error"] == "e" * 1024
    assert second["omitted"] == ["routing_key", "error"], "its features still fit"
    assert len(second["features"]["f0"]) == 1
    assert "omitted" not in third
    assert len(third["features"]["f0"]) == 1


def test_a_many_row_record_with_a_huge_routing_key_is_cut_then_split() -> None:
    big = record(0, rows=60_000, routing_key="k" * (2 * LIMIT))
    parts = decoded(pack_messages([(b"m", big)], LIMIT))
    assert len(parts) > 1
    assert {p["routing_key"] for p in parts} == {"k" * 1024}
    assert all(p["omitted"] == ["routing_key"] for p in parts)
    assert sum(p["rows"] for p in parts) == 60_000
