"""Labelled production traffic of the demo model written straight to the topics."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from aiokafka import AIOKafkaProducer
from sklearn.datasets import load_breast_cancer

from monitors.feedback import FeedbackRecord, encode_feedback
from monitors.schema import FeatureMatrix, InferenceRecord, encode_records

DATA = load_breast_cancer()
X = DATA.data.astype(np.float32)
Y = DATA.target
NAMES = [str(n) for n in DATA.feature_names]


def drifted(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bigger tumours than the training data's (radius, perimeter, area scaled up), true
    labels: the demo champion calls many benign ones malignant."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(X), rows)
    x = X[pick].copy()
    x[:, [0, 2, 3, 20, 22, 23]] *= 1.6
    return x, Y[pick]


async def publish(
    bootstrap_servers: str,
    x: np.ndarray,
    y: np.ndarray,
    labelled: int,
    prefix: str = "r",
    model: str = "breast_cancer",
) -> None:
    """One log record per row on ``inference-log``; labels for the first ``labelled`` rows on
    ``model-feedback``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, enable_idempotence=False)
    await producer.start()
    try:
        now = time.time()
        records: list[InferenceRecord] = [
            {
                "schema_version": 2, "request_id": f"{prefix}{i}", "time": now - len(x) + i,
                "endpoint": model, "model": model, "version": "1",
                "variant": "default", "role": "primary", "rows": 1, "latency_s": 0.001,
                "status": "ok", "features": FeatureMatrix(NAMES, x[i : i + 1]),
                "outputs": {"label": np.array([1])},
            }
            for i in range(len(x))
        ]  # fmt: skip
        for start in range(0, len(records), 200):
            chunk = records[start : start + 200]
            await producer.send_and_wait("inference-log", encode_records(chunk), model.encode())
        feedback: list[FeedbackRecord] = [
            {"schema": "feedback/1", "model": model, "request_id": f"{prefix}{i}",
             "row": 0, "labels": {"label": int(y[i])}, "time": now}
            for i in range(labelled)
        ]  # fmt: skip
        for start in range(0, len(feedback), 300):
            value = encode_feedback(feedback[start : start + 300])
            await producer.send_and_wait("model-feedback", value, model.encode())
    finally:
        await producer.stop()


def publish_sync(bootstrap_servers: str, x: np.ndarray, y: np.ndarray, labelled: int) -> None:
    asyncio.run(publish(bootstrap_servers, x, y, labelled))
