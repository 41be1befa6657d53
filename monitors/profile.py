"""Reference profiles: the training data's distribution per feature and of the predictions.

A profile is stored with the model version as ``reference_profile.json`` (written by
``python -m monitors profile build``); where a version has none, the ``reference`` in its
``metadata.json`` (histograms on quantile bins) serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from registry_client.metadata import ModelMetadata

__all__ = [
    "PROFILE_FILE",
    "FeatureProfile",
    "ModelProfile",
    "build_profile",
    "load_profile",
    "profile_from_metadata",
]

PROFILE_FILE = "reference_profile.json"
OTHER = "__other__"


class FeatureProfile(BaseModel):
    """One feature (or prediction output) in the training data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["numeric", "categorical"]
    # numeric: counts on quantile bins (outer bins open-ended), summary statistics
    bin_edges: list[float] = Field(default_factory=list)
    counts: list[int] = Field(default_factory=list)
    mean: float = 0.0
    std: float = 0.0
    quantiles: dict[str, float] = Field(default_factory=dict)
    # categorical: counts per category; categories never seen count as OTHER
    categories: dict[str, int] = Field(default_factory=dict)
    missing_rate: float = 0.0
    rows: int = 0


class ModelProfile(BaseModel):
    """Every feature's profile, and the predictions' (keyed ``prediction:<output>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: dict[str, FeatureProfile]

    def dump(self, directory: Path) -> None:
        (directory / PROFILE_FILE).write_text(self.model_dump_json(indent=1))


def _numeric(values: np.ndarray, bins: int) -> FeatureProfile:
    values = values.astype(np.float64)
    present = values[~np.isnan(values)]
    missing = 1 - len(present) / len(values) if len(values) else 0.0
    edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = (
            np.array([present.min() - 0.5, present.max() + 0.5])
            if len(present)
            else np.array([0.0, 1.0])
        )
    index = np.searchsorted(edges[1:-1], present, side="right")
    counts = np.bincount(index, minlength=len(edges) - 1)
    q = np.quantile(present, [0.01, 0.25, 0.5, 0.75, 0.99]) if len(present) else np.zeros(5)
    return FeatureProfile(
        kind="numeric",
        bin_edges=edges.tolist(),
        counts=counts.tolist(),
        mean=float(present.mean()) if len(present) else 0.0,
        std=float(present.std()) if len(present) else 0.0,
        quantiles=dict(zip(["p1", "p25", "p50", "p75", "p99"], map(float, q), strict=True)),
        missing_rate=float(missing),
        rows=len(values),
    )


def _categorical(values: np.ndarray, max_categories: int) -> FeatureProfile:
    labels = np.asarray([str(v) for v in values.tolist()])
    names, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts)
    kept = {str(names[i]): int(counts[i]) for i in order[:max_categories]}
    rest = int(counts[order[max_categories:]].sum())
    if rest:
        kept[OTHER] = rest
    return FeatureProfile(kind="categorical", categories=kept, rows=len(values))


def build_profile(
    columns: dict[str, np.ndarray],
    categorical: set[str] = frozenset(),  # type: ignore[assignment]
    bins: int = 10,
    max_categories: int = 50,
) -> ModelProfile:
    """Profile named columns (features, and predictions named ``prediction:<output>``)."""
    features = {
        name: _categorical(values, max_categories)
        if name in categorical
        else _numeric(values, bins)
        for name, values in columns.items()
    }
    return ModelProfile(features=features)


def load_profile(directory: Path) -> ModelProfile | None:
    """The profile stored with a model version, else one from its metadata's reference."""
    path = directory / PROFILE_FILE
    if path.exists():
        return ModelProfile.model_validate_json(path.read_bytes())
    from registry_client.metadata import ModelMetadata

    return profile_from_metadata(ModelMetadata.load(directory))


def profile_from_metadata(metadata: ModelMetadata) -> ModelProfile | None:
    """The profile a version's metadata ``reference`` holds (histograms), or None."""
    from registry_client.metadata import NumericProfile

    if metadata.reference is None:
        return None
    features: dict[str, FeatureProfile] = {}
    for name, ref in metadata.reference.features.items():
        if isinstance(ref, NumericProfile):
            features[name] = FeatureProfile(
                kind="numeric", bin_edges=ref.bin_edges, counts=ref.counts, mean=ref.mean,
                std=ref.std, rows=metadata.reference.rows,
            )  # fmt: skip
        else:
            features[name] = FeatureProfile(kind="categorical", categories=ref.counts)
    return ModelProfile(features=features)
