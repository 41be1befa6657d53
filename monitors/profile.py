"""Reference profiles: the training data's distribution per feature and of the predictions.

A profile is stored with the model version as ``reference_profile.json`` (written by
``python -m monitors profile build``); where a version has none, the ``reference`` in its
``metadata.json`` (histograms on quantile bins) serves.

The model's metadata is the contract: its features are profiled (a column of the training data
that is not one of them, or a predicted output, is ignored), with the kind it declares. A
feature declared categorical, or of type ``bool`` or ``string``, is categorical whatever its
encoding, its values labelled by ``monitors.categories``; the others are numeric. A numeric
column with at most ``bins`` distinct values (a 0/1 flag, a count, a predicted class) gets bins
that separate its values, since quantile bins would put them all in one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from monitors.categories import OTHER, category_label, count_categories
from registry_client.metadata import FeatureSpec, ModelMetadata

__all__ = [
    "OTHER",
    "PREDICTION",
    "PROFILE_FILE",
    "FeatureProfile",
    "ModelProfile",
    "ProfileError",
    "build_model_profile",
    "build_profile",
    "is_categorical",
    "load_profile",
    "profile_from_metadata",
    "with_types",
]

PROFILE_FILE = "reference_profile.json"
PREDICTION = "prediction:"  # a predicted output's column: prediction:<output>

Dtype = Literal["float", "int", "bool", "string"]


class ProfileError(ValueError):
    """Training data or a stored profile that does not fit the model; the message names the
    column or feature."""


class FeatureProfile(BaseModel):
    """One feature (or prediction output) in the training data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["numeric", "categorical"]
    # the type the model's metadata declares (None for outputs): how categories are labelled
    dtype: Dtype | None = None
    # numeric: counts on quantile bins (outer bins open-ended), summary statistics
    bin_edges: list[float] = Field(default_factory=list)
    counts: list[int] = Field(default_factory=list)
    mean: float = 0.0
    std: float = 0.0
    quantiles: dict[str, float] = Field(default_factory=dict)
    # categorical: counts per category; categories never seen count as OTHER
    categories: dict[str, int] = Field(default_factory=dict)
    missing_rate: float = 0.0
    rows: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _usable(self) -> FeatureProfile:
        """What the windows and the tests take for granted of a profile (one written by hand,
        or by another tool, may not hold it)."""
        if self.kind == "numeric":
            edges, counts = len(self.bin_edges), len(self.counts)
            if edges < 2 or counts != edges - 1:
                raise ValueError(
                    "a numeric feature needs at least 2 bin_edges and one count per bin, "
                    f"len(counts) == len(bin_edges) - 1 (it has {edges} and {counts})"
                )
            if any(b < a for a, b in pairwise(self.bin_edges)):
                raise ValueError("bin_edges must be in ascending order")
        if not all(0 <= n < 1 << 63 for n in (*self.counts, *self.categories.values())):
            raise ValueError("counts must be whole numbers from 0 to 2**63 - 1")
        if not 0 <= self.missing_rate <= 1:
            raise ValueError(f"missing_rate must be from 0 to 1, not {self.missing_rate}")
        return self


class ModelProfile(BaseModel):
    """Every feature's profile, and the predictions' (keyed ``prediction:<output>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: dict[str, FeatureProfile]

    def dump(self, directory: Path) -> None:
        (directory / PROFILE_FILE).write_text(self.model_dump_json(indent=1))


def _edges(present: np.ndarray, bins: int) -> np.ndarray:
    """Quantile edges; for a column of at most ``bins`` distinct values, edges halfway between
    them, so each value has its own bin; for a constant, a bin holding only its value."""
    if not len(present):
        return np.array([0.0, 1.0])
    distinct = np.unique(present)
    if len(distinct) <= bins:
        if len(distinct) == 1:
            # a bin for the value alone and one either side: in a single bin (open-ended both
            # ways) a window of any other values would look the same as the reference
            value = float(distinct[0])
            below, above = np.nextafter(value, -np.inf), np.nextafter(value, np.inf)
            low, high = min(value - 0.5, below), max(value + 0.5, np.nextafter(above, np.inf))
            return np.array([low, value, above, high])
        middles = (distinct[:-1] + distinct[1:]) / 2
        gaps = np.diff(distinct)
        return np.concatenate([[distinct[0] - gaps[0] / 2], middles, [distinct[-1] + gaps[-1] / 2]])
    edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)))
    return edges if len(edges) >= 2 else np.array([present.min() - 0.5, present.max() + 0.5])


def _numeric(values: np.ndarray, bins: int, dtype: Dtype | None = None) -> FeatureProfile:
    values = values.astype(np.float64)
    present = values[~np.isnan(values)]
    missing = 1 - len(present) / len(values) if len(values) else 0.0
    # Edges and summary statistics from the finite values (an infinity makes quantiles NaN);
    # infinities are counted in the outer bins, as the windows count them.
    finite = present[np.isfinite(present)]
    edges = _edges(finite, bins)
    index = np.searchsorted(edges[1:-1], present, side="right")
    counts = np.bincount(index, minlength=len(edges) - 1)
    q = np.quantile(finite, [0.01, 0.25, 0.5, 0.75, 0.99]) if len(finite) else np.zeros(5)
    return FeatureProfile(
        kind="numeric",
        dtype=dtype,
        bin_edges=edges.tolist(),
        counts=counts.tolist(),
        mean=float(finite.mean()) if len(finite) else 0.0,
        std=float(finite.std()) if len(finite) else 0.0,
        quantiles=dict(zip(["p1", "p25", "p50", "p75", "p99"], map(float, q), strict=True)),
        missing_rate=float(missing),
        rows=len(values),
    )


def _categorical(
    values: np.ndarray, max_categories: int, dtype: Dtype | None = None
) -> FeatureProfile:
    counts, missing = count_categories(values.tolist(), dtype)
    order = sorted(counts, key=lambda c: (-counts[c], c))
    kept = {c: counts[c] for c in order[:max_categories]}
    rest = sum(counts[c] for c in order[max_categories:])
    if rest:
        kept[OTHER] = kept.get(OTHER, 0) + rest
    return FeatureProfile(
        kind="categorical",
        dtype=dtype,
        categories=kept,
        missing_rate=missing / len(values) if len(values) else 0.0,
        rows=len(values),
    )


def build_profile(
    columns: Mapping[str, np.ndarray],
    categorical: Collection[str] = frozenset(),
    bins: int = 10,
    max_categories: int = 50,
    dtypes: Mapping[str, Dtype] | None = None,
) -> ModelProfile:
    """Profile named columns (features, and predictions named ``prediction:<output>``): the
    ``categorical`` ones by category, labelled by their ``dtypes``, the others on bins."""
    dtypes = dtypes or {}
    features = {
        name: _categorical(values, max_categories, dtypes.get(name))
        if name in categorical
        else _numeric(values, bins, dtypes.get(name))
        for name, values in columns.items()
    }
    return ModelProfile(features=features)


def is_categorical(spec: FeatureSpec) -> bool:
    """Whether the metadata makes a feature categorical: declared so, or boolean or text."""
    return spec.categorical or spec.dtype in ("bool", "string")


def _floats(name: str, values: np.ndarray) -> np.ndarray:
    """A column as floats: numbers as they are, text parsed; empty text and None missing."""
    if values.dtype.kind in "fiub":
        return values.astype(np.float64)
    out = np.empty(len(values))
    for i, value in enumerate(values.tolist()):
        if value is None or (isinstance(value, str) and not value.strip()):
            out[i] = np.nan
            continue
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            raise ProfileError(f"column {name!r}, row {i + 1}: {value!r} is not a number") from None
    return out


def build_model_profile(
    metadata: ModelMetadata,
    columns: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    categorical: Collection[str] = frozenset(),
    bins: int = 10,
    max_categories: int = 50,
) -> tuple[ModelProfile, list[str]]:
    """Profile training data for a model: its features as its metadata declares them, and
    its predictions (``prediction:<output>`` columns; of ``outputs`` when given). Returns the
    profile and the columns ignored; raises ProfileError naming a feature without a column.

    ``categorical`` makes more columns categorical (a predicted class, say)."""
    if not metadata.features:
        raise ProfileError(
            "the model's metadata.json declares no features: the profile follows the "
            "features it names (name, dtype, categorical)"
        )
    absent = [spec.name for spec in metadata.features if spec.name not in columns]
    if absent:
        raise ProfileError(f"the training data has no column for the model's features {absent}")
    predictions = [name for name in columns if name.startswith(PREDICTION)]
    if outputs is not None:
        unknown = [n for n in predictions if n.removeprefix(PREDICTION) not in outputs]
        if unknown:
            raise ProfileError(f"columns {unknown} name no output of the model ({list(outputs)})")
    chosen: dict[str, np.ndarray] = {}
    kinds: set[str] = set(categorical)
    dtypes: dict[str, Dtype] = {}
    for spec in metadata.features:
        dtypes[spec.name] = spec.dtype
        if is_categorical(spec) or spec.name in categorical:
            kinds.add(spec.name)
            chosen[spec.name] = np.asarray(columns[spec.name], dtype=object)
        else:
            chosen[spec.name] = _floats(spec.name, np.asarray(columns[spec.name]))
    for name in predictions:
        values = np.asarray(columns[name])
        if name not in kinds:
            try:
                values = _floats(name, values)
            except ProfileError:  # a predicted label as text
                kinds.add(name)
        chosen[name] = values
    ignored = [name for name in columns if name not in chosen]
    profile = build_profile(chosen, kinds, bins=bins, max_categories=max_categories, dtypes=dtypes)
    return profile, ignored


def with_types(profile: ModelProfile, metadata: ModelMetadata) -> ModelProfile:
    """The profile with the metadata's types: categories relabelled under the declared type
    (a profile built before types were read keeps "1.0" where the log says 1); raises
    ProfileError when the metadata declares categorical a feature the profile holds numeric."""
    features = dict(profile.features)
    for spec in metadata.features:
        feature = features.get(spec.name)
        if feature is None:
            continue
        if feature.kind == "numeric":
            if is_categorical(spec):
                raise ProfileError(
                    f"feature {spec.name!r} is categorical in metadata.json but numeric in its "
                    "reference profile: rebuild it with `python -m monitors profile build`"
                )
            features[spec.name] = feature.model_copy(update={"dtype": spec.dtype})
            continue
        categories: dict[str, int] = {}
        missing = 0
        for category, n in feature.categories.items():
            label = category if category == OTHER else category_label(category, spec.dtype)
            if label is None:
                missing += n
            else:
                categories[label] = categories.get(label, 0) + n
        rows = feature.rows or sum(feature.categories.values())
        missing_rate = feature.missing_rate + (missing / rows if rows else 0.0)
        features[spec.name] = feature.model_copy(
            update={"dtype": spec.dtype, "categories": categories, "missing_rate": missing_rate}
        )
    return ModelProfile(features=features)


def load_profile(directory: Path) -> ModelProfile | None:
    """The profile stored with a model version, else one from its metadata's reference, with
    the types its metadata declares (``with_types``)."""
    metadata = ModelMetadata.load(directory)
    path = directory / PROFILE_FILE
    if path.exists():
        return with_types(ModelProfile.model_validate_json(path.read_bytes()), metadata)
    profile = profile_from_metadata(metadata)
    return None if profile is None else with_types(profile, metadata)


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
