"""Inference-log records for monitor tests, as the gateway writes them (monitors/schema.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
from aiokafka.structs import ConsumerRecord
from sklearn.datasets import load_breast_cancer

from monitors.profile import ModelProfile, build_profile
from monitors.schema import encode_records

DATA = load_breast_cancer()
NAMES = [str(n) for n in DATA.feature_names]
X = DATA.data.astype(np.float64)


def demo_profile() -> ModelProfile:
    columns = {name: X[:, j] for j, name in enumerate(NAMES)}
    columns["prediction:label"] = (X[:, 0] > 14).astype(float)  # as ``records`` labels rows
    return build_profile(columns)


def records(
    rows: np.ndarray,
    *,
    start_time: float = 1_000.0,
    step_s: float = 0.01,
    model: str = "breast_cancer",
    version: str = "1",
    labels: np.ndarray | None = None,
    prefix: str = "r",
) -> list[dict[str, Any]]:
    """One single-row record per row."""
    labels = labels if labels is not None else (rows[:, 0] > 14).astype(int)
    return [
        {
            "schema_version": 1, "request_id": f"{prefix}{i}", "time": start_time + i * step_s,
            "endpoint": model, "model": model, "version": version, "variant": "default",
            "role": "primary", "rows": 1, "status": "ok", "latency_s": 0.001,
            "features": {name: [float(row[j])] for j, name in enumerate(NAMES)},
            "outputs": {"label": [int(labels[i])]},
        }
        for i, row in enumerate(rows)
    ]  # fmt: skip


def sample(
    rng: np.random.Generator, n: int, shift_sigma: float = 0.0, feature: int = 0
) -> np.ndarray:
    """Rows drawn from the dataset; optionally one feature shifted by some of its sigmas."""
    rows: np.ndarray = X[rng.integers(0, len(X), size=n)].copy()
    rows[:, feature] += shift_sigma * X[:, feature].std()
    return rows


def consumer_records(batch: list[dict[str, Any]]) -> list[ConsumerRecord[bytes, bytes]]:
    """As the gateway's feature log writes them: 100 records to a message."""
    out = []
    for offset, start in enumerate(range(0, len(batch), 100)):
        value = encode_records(batch[start : start + 100])  # type: ignore[arg-type]
        out.append(ConsumerRecord("inference-log", 0, offset, 0, 0, b"breast_cancer", value, None, 1, len(value), []))  # fmt: skip
    return out


def backlog() -> list[dict[str, Any]]:
    """1,500 calm rows, then 3,000 with bigger tumours, and a shadow and an invalid request."""
    rng = np.random.default_rng(0)
    calm = sample(rng, 1500)
    drifted = sample(rng, 3000)
    drifted[:, [0, 2, 3]] *= 1.6
    batch = records(np.vstack([calm, drifted]), model="breast_cancer")
    batch.insert(10, {**batch[10], "request_id": "shadow", "role": "shadow"})
    batch.insert(20, {**batch[20], "request_id": "bad", "status": "invalid", "features": {}})
    return batch
