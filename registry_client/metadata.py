"""The metadata file stored beside each ``model.onnx``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from registry_client.errors import CorruptModelError
from registry_client.validation import ValidationReport

__all__ = [
    "METADATA_FILE",
    "MODEL_FILE",
    "BatchingHints",
    "CategoricalProfile",
    "FeatureSpec",
    "ModelMetadata",
    "NumericProfile",
    "ReferenceProfile",
    "file_sha256",
]

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"


class FeatureSpec(BaseModel):
    """One named input feature, a column of the model's feature tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    dtype: Literal["float", "int", "bool", "string"] = "float"
    categorical: bool = False
    categories: list[str] | None = None


class BatchingHints(BaseModel):
    """Batching defaults the model's author recommends; the gateway's config can override them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int | None = Field(default=None, ge=1)
    max_batch_delay_s: float | None = Field(default=None, ge=0)
    warmup_batch_sizes: list[int] = Field(default_factory=lambda: [1])


class NumericProfile(BaseModel):
    """Histogram of a numeric feature in the training data, on fixed bin edges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["numeric"] = "numeric"
    bin_edges: list[float]
    counts: list[int]
    mean: float
    std: float

    @model_validator(mode="after")
    def _edges_match_counts(self) -> NumericProfile:
        if len(self.bin_edges) != len(self.counts) + 1:
            raise ValueError("numeric profile needs len(bin_edges) == len(counts) + 1")
        return self


class CategoricalProfile(BaseModel):
    """Counts per category of a categorical feature in the training data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["categorical"] = "categorical"
    counts: dict[str, int]


class ReferenceProfile(BaseModel):
    """The training data's distribution per feature, the baseline for drift detection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int = Field(ge=0)
    features: dict[str, NumericProfile | CategoricalProfile] = Field(default_factory=dict)


class ModelMetadata(BaseModel):
    """What the gateway and the monitor need to know about a model beyond its ONNX graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    description: str = ""
    # Name of the ONNX input that holds the feature columns; None when the model has one input.
    feature_input: str | None = None
    features: list[FeatureSpec] = Field(default_factory=list)
    class_labels: list[str] | None = None
    batching: BatchingHints = Field(default_factory=BatchingHints)
    reference: ReferenceProfile | None = None
    # held-out metrics: the baseline of realized performance (monitors/performance.py)
    validation: ValidationReport | None = None
    # sha256 of model.onnx; verified when present.
    model_sha256: str | None = None

    @property
    def feature_names(self) -> list[str]:
        """Names of the features, in column order."""
        return [f.name for f in self.features]

    @classmethod
    def load(cls, directory: Path) -> ModelMetadata:
        """Read ``metadata.json`` from a version folder; a folder without one gets defaults."""
        path = directory / METADATA_FILE
        if not path.exists():
            return cls()
        try:
            return cls.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise CorruptModelError(f"invalid {METADATA_FILE} in {directory.name}: {exc}") from exc
        except OSError as exc:  # a folder by that name, or a file this process may not read
            raise CorruptModelError(
                f"cannot read {METADATA_FILE} in {directory.name}: {exc.strerror or exc}"
            ) from exc

    def dump(self, directory: Path) -> None:
        """Write ``metadata.json`` into a version folder."""
        (directory / METADATA_FILE).write_text(self.model_dump_json(indent=2, exclude_none=True))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
