"""Tensor signatures: names, Open Inference Protocol datatypes, shapes, the batch dimension."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from registry_client.metadata import ModelMetadata

__all__ = [
    "DATATYPE_TO_NUMPY",
    "ONNX_TO_DATATYPE",
    "Signature",
    "TensorSpec",
    "breaking_changes",
    "datatype_of",
    "feature_input",
    "per_feature_inputs",
]

# Open Inference Protocol datatype -> numpy dtype. BYTES travels as object arrays of str/bytes.
DATATYPE_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

ONNX_TO_DATATYPE: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_NUMPY_TO_DATATYPE = {v: k for k, v in DATATYPE_TO_NUMPY.items()}


def datatype_of(array: np.ndarray) -> str:
    """The Open Inference Protocol datatype of a numpy array (str/bytes arrays are BYTES)."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    return _NUMPY_TO_DATATYPE[array.dtype]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output. ``shape`` uses -1 for a dimension the model leaves open."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[np.generic]:
        """The numpy dtype arrays of this tensor have."""
        return DATATYPE_TO_NUMPY[self.datatype]

    @property
    def has_batch_dim(self) -> bool:
        """True when the first dimension is open, so rows of several requests can be stacked."""
        return len(self.shape) > 0 and self.shape[0] == -1

    def describe(self) -> dict[str, object]:
        """The OIP model-metadata form of this tensor."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class InputCheck:
    """What ``validate_inputs`` checks of one input, computed once per model."""

    name: str
    dtype: np.dtype[np.generic]
    datatype: str
    rank: int
    fixed: tuple[tuple[int, int], ...]  # (axis, size) of every dimension the model fixes
    has_batch_dim: bool


@dataclass(frozen=True, slots=True)
class Signature:
    """A model's inputs and outputs, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    checks: tuple[InputCheck, ...] = field(init=False, compare=False, repr=False)
    input_names: frozenset[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        checks = tuple(
            InputCheck(
                spec.name,
                spec.dtype,
                spec.datatype,
                len(spec.shape),
                tuple((axis, size) for axis, size in enumerate(spec.shape) if size != -1),
                spec.has_batch_dim,
            )
            for spec in self.inputs
        )
        object.__setattr__(self, "checks", checks)
        object.__setattr__(self, "input_names", frozenset(spec.name for spec in self.inputs))

    @property
    def batchable(self) -> bool:
        """Whether requests can be combined: every input and output has an open first dim."""
        return all(t.has_batch_dim for t in (*self.inputs, *self.outputs))

    def input(self, name: str) -> TensorSpec | None:
        """The input of that name, or None."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def output(self, name: str) -> TensorSpec | None:
        """The output of that name, or None."""
        for spec in self.outputs:
            if spec.name == name:
                return spec
        return None


def breaking_changes(serving: Signature, new: Signature) -> list[str]:
    """What ``new`` changes of ``serving``'s tensors that requests made for ``serving`` would
    fail on: an input gone, added, or of another datatype or shape (a fixed dimension may
    open, nothing else), an output gone or of another datatype. Empty when none."""
    changes = []
    for spec in serving.inputs:
        other = new.input(spec.name)
        if other is None:
            changes.append(f"input {spec.name!r} is gone")
        elif other.datatype != spec.datatype:
            changes.append(f"input {spec.name!r} takes {other.datatype}, not {spec.datatype}")
        elif len(other.shape) != len(spec.shape) or any(
            size not in (-1, was) for size, was in zip(other.shape, spec.shape, strict=True)
        ):
            changes.append(
                f"input {spec.name!r} takes shape {list(other.shape)}, not {list(spec.shape)}"
            )
    changes += [f"input {s.name!r} is new" for s in new.inputs if serving.input(s.name) is None]
    for spec in serving.outputs:
        other = new.output(spec.name)
        if other is None:
            changes.append(f"output {spec.name!r} is gone")
        elif other.datatype != spec.datatype:
            changes.append(f"output {spec.name!r} is {other.datatype}, not {spec.datatype}")
    return changes


def feature_input(signature: Signature, metadata: ModelMetadata) -> TensorSpec | None:
    """The input whose columns are the metadata's named features, when the model has one."""
    if not metadata.features:
        return None
    if metadata.feature_input is not None:
        return signature.input(metadata.feature_input)
    if len(signature.inputs) == 1 and len(signature.inputs[0].shape) == 2:
        width = signature.inputs[0].shape[1]
        if width in (-1, len(metadata.features)):
            return signature.inputs[0]
    return None


def per_feature_inputs(signature: Signature, metadata: ModelMetadata) -> dict[str, str]:
    """Feature name -> input name, when the model takes one input per feature; else empty.

    The inputs are named as the features, or as skl2onnx names them when it converts a
    pipeline on a data frame (``od280/od315`` becomes ``od280_od315``), so callers and the
    feature log keep the features' own names.
    """
    names = [spec.name for spec in signature.inputs]
    features = metadata.feature_names
    if not features or len(features) != len(names) or feature_input(signature, metadata):
        return {}
    if set(features) == set(names):
        return {name: name for name in features}
    taken: set[str] = set()
    renamed = {feature: _skl2onnx_name(feature, taken) for feature in features}
    return renamed if set(renamed.values()) == set(names) else {}


def _skl2onnx_name(seed: str, taken: set[str]) -> str:
    """The name skl2onnx gives a data frame column's input (its C-style clean-up, then a
    number appended until the name is unused), taking it."""
    name = re.sub(r"[^\w+]", "_", seed)
    if re.match(r"[0-9]", name):
        name = "_" + name
    unique, i = name, 0
    while unique in taken:
        i += 1
        unique = f"{name}{i}"
    taken.add(unique)
    return unique
