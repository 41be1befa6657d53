"""What a version folder says about itself: ``metadata.json``, and MLflow's ``MLmodel`` file.

An MLflow model (``mlflow.onnx.log_model``) carries an ``MLmodel`` file: the ONNX file's name
in ``flavors.onnx.data``, the ``signature`` (column names and types when it was inferred from
a data frame) and whatever the author passed as ``metadata=``. From it come the model file,
the features (from a column-based ``signature.inputs``) and any of our metadata fields given in
its ``metadata:`` (``class_labels``, ``batching``, ``reference``, ...; other keys are the
author's own and ignored). ``metadata.json``, where present, wins field by field. ``sources``
says where each piece came from.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from registry_client.errors import CorruptModelError, RegistryError
from registry_client.metadata import METADATA_FILE, MODEL_FILE, FeatureSpec, ModelMetadata

__all__ = [
    "MLMODEL_FILE",
    "VersionFiles",
    "describe_version_dir",
    "onnx_file_of",
    "parse_mlmodel",
]

MLMODEL_FILE = "MLmodel"

FROM_METADATA_FILE = METADATA_FILE
FROM_MLMODEL_METADATA = f"{MLMODEL_FILE} metadata"
FROM_SIGNATURE = f"{MLMODEL_FILE} signature.inputs"
FROM_FLAVOR = f"{MLMODEL_FILE} flavors.onnx.data"

# MLflow column types -> feature dtypes; string columns are categorical.
_COLUMN_TYPES: dict[str, Literal["float", "int", "bool", "string"]] = {
    "boolean": "bool",
    "integer": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "string": "string",
}
_FIELDS = [f for f in ModelMetadata.model_fields if f != "schema_version"]
_DEFAULTS = ModelMetadata()


@dataclass(frozen=True, slots=True)
class VersionFiles:
    """A version folder's description: the ONNX file's name, metadata, and their sources."""

    model_file: str
    metadata: ModelMetadata
    sources: dict[str, str] = field(default_factory=dict)


def describe_version_dir(directory: Path, what: str) -> VersionFiles:
    """Read ``metadata.json`` and ``MLmodel`` (either may be absent) and merge them."""
    own = ModelMetadata.load(directory)
    path = directory / MLMODEL_FILE
    if not path.is_file():
        sources = {"model_file": "default"}
        sources.update(dict.fromkeys(_given(own), FROM_METADATA_FILE))
        return VersionFiles(MODEL_FILE, own, sources)
    mlmodel = parse_mlmodel(path.read_bytes(), what)
    model_file = onnx_file_of(mlmodel, what)
    theirs = _metadata_field(mlmodel, what)
    merged: dict[str, Any] = {}
    sources = {"model_file": FROM_FLAVOR}
    own_fields, their_fields = _given(own), _given(theirs)
    for name in _FIELDS:
        if name in own_fields:
            merged[name], sources[name] = getattr(own, name), FROM_METADATA_FILE
        elif name in their_fields:
            merged[name], sources[name] = getattr(theirs, name), FROM_MLMODEL_METADATA
    if "features" not in merged:
        features, note = _signature_features(mlmodel)
        if features:
            merged["features"], sources["features"] = features, FROM_SIGNATURE
        elif note:
            sources["features"] = note
    try:
        metadata = ModelMetadata.model_validate(merged)
    except ValidationError as exc:
        problem = f"{METADATA_FILE} and {MLMODEL_FILE} together are not valid metadata"
        raise CorruptModelError(f"{what}: {problem}: {exc}") from exc
    return VersionFiles(model_file, metadata, sources)


def onnx_file_of(mlmodel: dict[str, Any], what: str) -> str:
    """The ONNX file an MLmodel document names; a RegistryError naming its flavours if none."""
    flavors = mlmodel.get("flavors")
    if not isinstance(flavors, dict) or not flavors:
        raise CorruptModelError(f"{what}: {MLMODEL_FILE} names no flavours")
    onnx = flavors.get("onnx")
    if not isinstance(onnx, dict):
        raise RegistryError(
            f"{what}: flavours [{', '.join(sorted(map(str, flavors)))}]; the gateway serves the "
            "onnx flavour: convert with skl2onnx and log with mlflow.onnx.log_model"
        )
    data = onnx.get("data", MODEL_FILE)
    if (
        not isinstance(data, str)
        or not data
        or posixpath.isabs(data)
        or posixpath.normpath(data) != data
        or data.startswith("..")
    ):
        raise CorruptModelError(f"{what}: {MLMODEL_FILE} flavors.onnx.data {data!r} is not a path")
    return data


def _given(metadata: ModelMetadata) -> list[str]:
    """The fields a metadata document gives (``dump`` writes defaults too: those do not count)."""
    return [f for f in _FIELDS if getattr(metadata, f) != getattr(_DEFAULTS, f)]


def parse_mlmodel(text: bytes | str, what: str) -> dict[str, Any]:
    """An MLmodel document (YAML) as a mapping."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CorruptModelError(f"{what}: {MLMODEL_FILE} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise CorruptModelError(f"{what}: {MLMODEL_FILE} must hold a mapping")
    return doc


def _metadata_field(mlmodel: dict[str, Any], what: str) -> ModelMetadata:
    given = mlmodel.get("metadata") or {}
    if not isinstance(given, dict):
        raise CorruptModelError(f"{what}: {MLMODEL_FILE} metadata must be a mapping")
    ours = {k: v for k, v in given.items() if k in _FIELDS}
    try:
        return ModelMetadata.model_validate(ours)
    except ValidationError as exc:
        raise CorruptModelError(f"{what}: invalid {FROM_MLMODEL_METADATA}: {exc}") from exc


def _signature_features(mlmodel: dict[str, Any]) -> tuple[list[FeatureSpec], str | None]:
    """Features from a column-based signature, or none and why (None: nothing to say)."""
    signature = mlmodel.get("signature")
    raw = signature.get("inputs") if isinstance(signature, dict) else None
    if raw is None:
        return [], None
    try:
        columns = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return [], f"none ({FROM_SIGNATURE} is not JSON)"
    if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
        return [], f"none ({FROM_SIGNATURE} is not a list of columns)"
    features = []
    for column in columns:
        kind, name = column.get("type"), column.get("name")
        if kind == "tensor":
            return [], f"none ({FROM_SIGNATURE} is tensor-based; infer it from a data frame)"
        if not isinstance(name, str) or not name:
            return [], f"none ({FROM_SIGNATURE} has unnamed columns)"
        dtype = _COLUMN_TYPES.get(str(kind))
        if dtype is None:
            return [], f"none ({FROM_SIGNATURE}: column {name!r} has type {kind!r})"
        features.append(FeatureSpec(name=name, dtype=dtype, categorical=dtype == "string"))
    return features, None
