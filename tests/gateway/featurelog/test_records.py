from __future__ import annotations

import numpy as np
import orjson

from gateway.featurelog import pack_messages
from gateway.featurelog.records import RecordBuilder, RequestInfo
from monitors.schema import FeatureMatrix, InferenceRecord, decode_records, encode_record

NAMES = ["mean radius", "mean texture", "100%"]


def build(builder: RecordBuilder, i: int, inputs: dict[str, np.ndarray] | None) -> InferenceRecord:
    return builder.build(
        RequestInfo(f"r{i}", 1000.0 + i, "bc", routing_key="u1" if i % 2 else None),
        model="bc",
        version="1",
        variant="default",
        role="primary",
        feature_input="input",
        feature_names=NAMES,
        inputs=inputs,
        outputs=None if inputs is None else {"label": np.array([i % 2])},
        rows=1,
        latency_s=0.001,
        status="ok" if inputs is not None else "invalid",
        error=None if inputs is not None else "input shape [1, 2]",
    )


def test_a_tabular_input_is_logged_as_one_matrix_and_read_back_by_name() -> None:
    builder = RecordBuilder()
    rows = np.array([[0.1, 17.5, 1.0]], dtype=np.float32)
    record = build(builder, 0, {"input": rows})
    assert isinstance(record["features"], FeatureMatrix)
    assert record["features"]["mean texture"].tolist() == [17.5]
    (decoded,) = decode_records(pack_messages([(b"bc", record)])[0][1])
    assert decoded["features"] == {"mean radius": [0.1], "mean texture": [17.5], "100%": [1.0]}
    assert decoded["outputs"] == {"label": [0]}


def test_the_feature_log_messages_hold_what_one_json_record_per_request_held() -> None:
    builder = RecordBuilder()
    rng = np.random.default_rng(0)
    records = [
        build(builder, i, None if i == 7 else {"input": rng.normal(size=(1, 3)).astype(np.float32)})
        for i in range(250)
    ]
    messages = pack_messages([(b"bc", r) for r in records])
    assert [(key, count) for key, _, count in messages] == [(b"bc", 100), (b"bc", 100), (b"bc", 50)]
    decoded = [r for _, value, _ in messages for r in decode_records(value)]
    assert decoded == [orjson.loads(encode_record(r)) for r in records]
    assert "features" not in decoded[7]


def test_dropped_and_hashed_features_are_logged_as_columns() -> None:
    builder = RecordBuilder(drop_features=frozenset({"100%"}), hash_features=frozenset({"mean radius"}), hash_key=b"k")  # fmt: skip
    record = build(builder, 0, {"input": np.array([[1.0, 2.0, 3.0]], dtype=np.float32)})
    (decoded,) = decode_records(pack_messages([(b"bc", record)])[0][1])
    assert set(decoded["features"]) == {"mean radius", "mean texture"}
    assert decoded["features"]["mean texture"] == [2.0]
    assert decoded["features"]["mean radius"] != [1.0]
    assert len(decoded["features"]["mean radius"][0]) == 16
