"""A tabular model's data as a new user has it: numeric, integer-coded categorical, boolean and
text features, trained outside this repository, its CSV holding more than the features."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from registry_client import FeatureSpec, ModelMetadata

FEATURES = [
    FeatureSpec(name="age", dtype="int"),
    FeatureSpec(name="income", dtype="float"),
    FeatureSpec(name="clicks", dtype="int"),  # 0-3: a numeric column of few values
    FeatureSpec(name="plan", dtype="int", categorical=True),  # integer-coded: 1, 2, 3
    FeatureSpec(name="member", dtype="bool"),
    FeatureSpec(name="colour", dtype="string", categorical=True),
]
METADATA = ModelMetadata(features=FEATURES)
COLOURS = ["red", "green", "blue"]


def draw(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Feature values and the predicted label, as the model sees and answers them."""
    age = rng.integers(18, 80, n)
    income = rng.lognormal(10, 0.5, n)
    member = rng.random(n) < 0.3
    return {
        "age": age,
        "income": income,
        "clicks": rng.choice(4, n, p=[0.5, 0.3, 0.15, 0.05]),
        "plan": rng.choice([1, 2, 3], n, p=[0.6, 0.3, 0.1]),
        "member": member,
        "colour": rng.choice(COLOURS, n, p=[0.5, 0.3, 0.2]),
        "prediction:label": ((income > 25_000) | member).astype(int),
    }


def write_csv(path: Path, columns: dict[str, np.ndarray], extra: bool = True) -> None:
    """As pandas writes a training set: integers as floats where a column had a gap, booleans
    as True/False, plus an id, a timestamp and the target."""
    n = len(columns["age"])
    names = ["id", *columns, "timestamp", "target"] if extra else list(columns)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for i in range(n):
            row: dict[str, Any] = {
                "id": i, "timestamp": f"2026-01-01T00:00:{i % 60:02d}", "target": i % 2,
                **{k: v[i] for k, v in columns.items()},
            }  # fmt: skip
            if "plan" in row:
                row["plan"] = f"{float(row['plan']):.1f}"  # "1.0" profiled, 1 arriving live
            row["member"] = str(bool(row["member"]))
            writer.writerow([row[name] for name in names])


def records(columns: dict[str, np.ndarray], *, start: float = 0.0) -> list[dict[str, Any]]:
    """Single-row log records as the gateway writes them for a model with an input per feature
    (BOOL as JSON true/false, integers as integers)."""
    n = len(columns["age"])
    lists = {k: v.tolist() for k, v in columns.items()}
    return [
        {
            "schema_version": 2, "request_id": f"r{i}", "time": start + i, "model": "tabular",
            "version": "1", "role": "primary", "rows": 1, "status": "ok", "latency_s": 0.001,
            "features": {f.name: [lists[f.name][i]] for f in FEATURES},
            "outputs": {"label": [lists["prediction:label"][i]]},
        }
        for i in range(n)
    ]  # fmt: skip
