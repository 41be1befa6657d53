"""Gateway feature-log records of any size, as the record builder makes them, for log tests."""

from __future__ import annotations

import numpy as np

from monitors.schema import FeatureMatrix, InferenceRecord

__all__ = ["NAMES", "log_record"]

NAMES = [f"f{j}" for j in range(30)]


def log_record(i: int, rows: int = 1, **extra: object) -> InferenceRecord:
    """Request ``r{i}`` of ``rows`` rows of 30 FP32 features, with a label and two scores."""
    rng = np.random.default_rng(i)
    built: InferenceRecord = {
        "schema_version": 2, "request_id": f"r{i}", "time": float(i), "endpoint": "m",
        "model": "m", "version": "1", "variant": "default", "role": "primary", "rows": rows,
        "latency_s": 0.01, "status": "ok",
        "features": FeatureMatrix(NAMES, rng.normal(size=(rows, 30)).astype(np.float32)),
        "outputs": {"label": np.arange(rows) % 2,
                    "probabilities": rng.random((rows, 2)).astype(np.float32)},
    }  # fmt: skip
    built.update(extra)  # type: ignore[typeddict-item]
    return built
