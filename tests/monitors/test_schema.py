from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from monitors.schema import (
    SCHEMA_VERSION,
    FeatureMatrix,
    InferenceRecord,
    RecordError,
    decode_columns,
    decode_records,
    encode_record,
    encode_records,
    message_records,
)

NAMES = ["a", "b", "c"]


def served(i: int, rows: int = 1, **extra: Any) -> InferenceRecord:
    matrix = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) / 10 + i
    record: InferenceRecord = {
        "schema_version": SCHEMA_VERSION, "request_id": f"r{i}", "time": 1000.0 + i,
        "endpoint": "m", "model": "m", "version": "1", "variant": "default", "role": "primary",
        "rows": rows, "latency_s": 0.002, "status": "ok",
        "features": FeatureMatrix(NAMES, matrix),
        "outputs": {"label": np.arange(rows) % 2, "scores": np.full((rows, 2), 0.5, np.float32)},
    }  # fmt: skip
    record.update(extra)  # type: ignore[typeddict-item]
    return record


def as_lines_read(records: list[InferenceRecord]) -> list[dict[str, Any]]:
    """What version 1 gave back: each record's own JSON, parsed."""
    return [{**orjson.loads(encode_record(r)), "schema_version": SCHEMA_VERSION} for r in records]


def assorted() -> list[InferenceRecord]:
    invalid: InferenceRecord = {
        "schema_version": SCHEMA_VERSION, "request_id": "bad", "time": 1.5, "endpoint": "m",
        "model": "m", "version": "1", "variant": "default", "role": "primary", "rows": 1,
        "latency_s": 0.0001, "status": "invalid", "error": "input shape [1, 2]",
    }  # fmt: skip
    return [
        served(0),
        served(1, rows=3, routing_key="user-7"),
        invalid,
        served(2, role="shadow", comparison={"primary_variant": "a", "agreement": 1.0}),
        served(3, features={"a": [1, 2], "b": ["x", "y"], "c": np.array([0.1, 0.2])}, rows=2),
        served(4, features={"a": [1, 2, 3], "b": [None]}),  # lengths that differ
        served(5, features={}, inputs={"img": {"datatype": "FP32", "shape": [1], "data": [0]}}),
        served(6, version="2", features=FeatureMatrix(["z"], np.ones((1, 1), np.float16))),
        served(7, error=None, outputs={"label": [1]}),
        served(8, features=FeatureMatrix(NAMES, np.ones((1, 3), np.int64))),
        served(9),
    ]


def test_records_come_back_exactly_as_version_1_gave_them() -> None:
    records = assorted()
    for size in (1, 2, 3, len(records)):
        for start in range(0, len(records), size):
            chunk = records[start : start + size]
            assert decode_records(encode_records(chunk)) == as_lines_read(chunk)


def test_a_message_holds_columns_readable_without_a_python_step_per_value() -> None:
    records = [served(i) for i in range(100)]
    message = encode_records(records)
    doc = orjson.loads(message)
    assert doc["schema_version"] == 2
    assert doc["records"] == message_records(message) == 100
    assert doc["fields"]["request_id"] == [f"r{i}" for i in range(100)]
    ((block,),) = [doc["features"]]
    assert "records" not in block
    assert "lengths" not in block
    assert block["columns"]["b"] == [r["features"]["b"][0] for r in as_lines_read(records)]
    assert block["columns"]["b"][:2] == [0.1, 1.1]  # float32 in its shortest form, as before
    lines = b"\n".join(encode_record(r) for r in records)
    assert len(message) < len(lines) / 2


def test_records_without_features_are_in_no_block() -> None:
    records = [served(0), served(1, status="invalid", error="bad"), served(2)]
    del records[1]["features"], records[1]["outputs"]
    doc = orjson.loads(encode_records(records))
    assert [b["records"] for b in doc["features"]] == [[0, 2]]
    assert doc["sparse"] == {"error": {"1": "bad"}}
    decoded = decode_records(encode_records(records))
    assert "features" not in decoded[1]
    assert "outputs" not in decoded[1]
    assert decoded == as_lines_read(records)


def test_records_whose_features_are_not_objects_are_written_as_lines() -> None:
    records = [served(0), served(1, features=None)]
    message = encode_records(records)
    assert message.count(b"\n") == 1
    assert decode_records(message) == [{**r, "schema_version": 1} for r in as_lines_read(records)]
    assert message_records(message) == 2


def test_version_1_messages_are_still_read() -> None:
    records = [{**r, "schema_version": 1} for r in as_lines_read([served(0), served(1, rows=2)])]
    message = b"\n".join(orjson.dumps(r) for r in records)
    assert decode_records(message) == records
    assert decode_records(orjson.dumps(records[0])) == records[:1]
    columns = decode_columns(message)
    assert columns.version == 1
    assert columns.fields["request_id"] == ["r0", "r1"]
    assert columns.features[0].columns["a"] == [0.0, 1.0, 1.3]
    assert message_records(message) == 2


def test_records_decoded_without_features_are_otherwise_the_same() -> None:
    records = [served(0), served(1, rows=2, outputs={"label": [1, 0]})]
    lines = b"\n".join(orjson.dumps({**r, "schema_version": 1}) for r in as_lines_read(records))
    for message in (encode_records(records), lines):
        whole = decode_records(message)
        assert all("features" in r for r in whole)
        without = decode_records(message, features=False)
        assert without == [{k: v for k, v in r.items() if k != "features"} for r in whole]


def broken(change: str) -> bytes:
    doc = orjson.loads(encode_records([served(0), served(1, rows=2)]))
    if change == "count":
        doc["records"] = 3
    elif change == "column":
        doc["features"][0]["columns"]["a"].pop()
    elif change == "record index":
        doc["features"][0]["records"] = [0, 5]
    elif change == "two blocks":
        doc["features"].append(doc["features"][0])
    elif change == "required":
        del doc["fields"]["model"]
    elif change == "sparse":
        doc["sparse"] = {"error": {"x": "bad"}}
    elif change == "version":
        doc["schema_version"] = 3
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    "change", ["count", "column", "record index", "two blocks", "required", "sparse", "version"]
)
def test_malformed_messages_raise_record_error(change: str) -> None:
    message = broken(change)
    with pytest.raises(RecordError):
        decode_records(message)
    with pytest.raises(RecordError):
        decode_columns(message)


def test_text_that_is_not_a_message_raises_record_error() -> None:
    for message in (b"not json", b"[1, 2]", b'{"schema_version": 1}'):
        with pytest.raises(RecordError):
            decode_records(message)
