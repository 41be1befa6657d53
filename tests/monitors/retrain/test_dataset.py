"""Joining the inference log with feedback: which rows train, and their labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from monitors.feedback import encode_feedback
from monitors.retrain.dataset import Dataset, join
from monitors.schema import InferenceRecord, encode_records
from registry_client import FeatureSpec, ModelMetadata

META = ModelMetadata(features=[FeatureSpec(name="a"), FeatureSpec(name="b")],
                     class_labels=["no", "yes"])  # fmt: skip


def record(rid: str, rows: int, t: float, **extra: Any) -> InferenceRecord:
    built: InferenceRecord = {
        "schema_version": 2, "request_id": rid, "time": t, "endpoint": "m", "model": "m",
        "version": "1", "variant": "default", "role": "primary", "rows": rows,
        "latency_s": 0.01, "status": "ok",
        "features": {"a": [float(i) for i in range(rows)], "b": [10.0 + i for i in range(rows)]},
    }  # fmt: skip
    built.update(extra)  # type: ignore[typeddict-item]
    return built


def label(rid: str, row: int, value: object) -> dict[str, Any]:
    return {"schema": "feedback/1", "model": "m", "request_id": rid, "row": row,
            "labels": {"label": value}}  # fmt: skip


def test_only_primary_successful_rows_of_the_model_in_the_window_with_labels_train() -> None:
    log = [
        record("r1", 3, 100.0),  # rows 0 and 2 labelled, 2 by class name
        record("old", 1, 10.0),  # before the window
        record("other", 1, 100.0, model="n"),
        record("shadow", 1, 100.0, role="shadow"),
        record("failed", 1, 100.0, status="error"),
        record("r2", 2, 101.0, part={"index": 1, "count": 2, "first_row": 5}),
    ]
    feedback = [
        label("r1", 0, 1), label("r1", 2, "no"), label("old", 0, 1), label("other", 0, 1),
        label("shadow", 0, 1), label("failed", 0, 0), label("r2", 6, 1), label("r2", 0, 0),
        label("r1", 1, "maybe"),  # not a class: unlabelled
    ]  # fmt: skip
    dataset = join(
        "m", META,
        [(0, encode_records(log))],
        [(0, encode_feedback(feedback))],  # type: ignore[arg-type]
        "label", start=50.0, end=200.0,
    )  # fmt: skip
    assert dataset.logged_rows == 5, "r1's three rows and r2's two"
    assert dataset.rows == 3
    assert dataset.x.tolist() == [[0.0, 10.0], [2.0, 12.0], [1.0, 11.0]]
    assert dataset.y.tolist() == [1, 0, 1]
    assert dataset.summary()["class_counts"] == [1, 2]


def test_the_newest_rows_are_held_out_and_a_dataset_survives_a_save(tmp_path: Any) -> None:
    n = 10
    dataset = Dataset(
        ["a"], np.arange(n, dtype=np.float32).reshape(n, 1), np.arange(n) % 2,
        np.arange(n, dtype=float)[::-1].copy(), ["no", "yes"], 12, 0.0, 9.0,
    )  # fmt: skip
    train, holdout = dataset.split(0.3)
    assert holdout.time.tolist() == [7.0, 8.0, 9.0]
    assert train.rows == 7
    assert holdout.x.ravel().tolist() == [2.0, 1.0, 0.0]
    dataset.save(tmp_path / "d.npz")
    again = Dataset.load(tmp_path / "d.npz")
    assert again.x.tolist() == dataset.x.tolist()
    assert (again.logged_rows, again.class_labels, again.end) == (12, ["no", "yes"], 9.0)


def test_malformed_log_records_are_skipped_and_counted_not_the_jobs_end() -> None:
    # a time of "now" or None failed the whole job (TypeError comparing it with the window),
    # a request id that is a list too (unhashable), and rows of 10**12 looped for ever
    log = [
        record("r1", 2, 100.0),
        {**record("t", 1, 100.0), "time": "now"},
        {**record("n", 1, 100.0), "time": None},
        {**record("huge", 1, 100.0), "rows": 10**12},
        {**record("s", 1, 100.0), "rows": "1"},
        {**record("p", 1, 100.0), "part": [1]},
        {**record("x", 1, 100.0), "request_id": ["x"]},
        {**record("f", 1, 100.0), "features": {"a": {"0": 1.0}, "b": [1.0]}},  # no rows
        {**record("txt", 3, 100.0), "features": {"a": "123", "b": [1.0, 2.0, 3.0]}},  # not 1, 2, 3
        record("r2", 1, 101.0),
    ]
    lines = b"\n".join(orjson.dumps({**r, "schema_version": 1}) for r in log)
    feedback = [label(r, 0, 1) for r in ("r1", "t", "n", "huge", "s", "p", "f", "txt", "r2")]
    dataset = join(
        "m", META, [(0, lines)], [(0, encode_feedback(feedback))],  # type: ignore[arg-type]
        "label", start=50.0, end=200.0,
    )  # fmt: skip
    assert dataset.rows == 2
    assert dataset.logged_rows == 3, "r1's two rows, r2's one"
    assert dataset.summary()["malformed_records"] == 8
    assert dataset.x.tolist() == [[0.0, 10.0], [0.0, 10.0]]
