"""The simple JSON form for applications that do not speak tensors.

Request: ``{"instances": [{"feature": value, ...}, ...]}`` (rows as objects keyed by feature
name, or as lists in feature order) or ``{"features": {...}}`` for one row; ``id`` optional.
Response: ``{"model_name", "model_version", "id", "predictions": [{"output": value, ...}, ...]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.errors import InvalidInputError
from gateway.protocol._json import check_scalars, load_object, request_id
from gateway.serving import Signature, TensorSpec, feature_input
from registry_client.metadata import ModelMetadata

__all__ = ["RowsLayout", "parse_instances", "parse_rows", "render_predictions", "rows_layout"]


def parse_instances(
    body: bytes,
    signature: Signature,
    metadata: ModelMetadata,
    feature_inputs: Mapping[str, str] | None = None,
) -> tuple[str | None, dict[str, np.ndarray]]:
    """Turn named-feature rows into the model's input tensors; returns the request id too.

    ``feature_inputs`` (feature -> input, ``per_feature_inputs``) lets callers name the
    features of a model with one input per feature as its metadata does.
    """
    return parse_rows(body, rows_layout(signature, metadata, feature_inputs))


@dataclass(frozen=True, slots=True)
class RowsLayout:
    """What parsing rows needs of a model: small and picklable, for a parse process."""

    signature: Signature
    feature_names: list[str]
    column_input: TensorSpec | None
    feature_inputs: dict[str, str]


def rows_layout(
    signature: Signature, metadata: ModelMetadata, feature_inputs: Mapping[str, str] | None = None
) -> RowsLayout:
    """The layout ``parse_rows`` takes, for a model (``parse_instances``'s arguments)."""
    return RowsLayout(
        signature,
        metadata.feature_names,
        feature_input(signature, metadata),
        dict(feature_inputs or {}),
    )


def parse_rows(body: bytes, layout: RowsLayout) -> tuple[str | None, dict[str, np.ndarray]]:
    """``parse_instances`` with the model's layout worked out before (``rows_layout``)."""
    doc = load_object(body)
    caller_id = request_id(doc)
    if "instances" in doc:
        rows = doc["instances"]
        if not isinstance(rows, list) or not rows:
            raise InvalidInputError("'instances' must be a non-empty list of rows")
    elif "features" in doc:
        if not isinstance(doc["features"], dict):
            raise InvalidInputError("'features' must be an object of feature values")
        rows = [doc["features"]]
    else:
        raise InvalidInputError("body needs 'instances' (a list of rows) or 'features' (one row)")
    signature, names = layout.signature, layout.feature_names
    if layout.column_input is not None:
        return caller_id, {layout.column_input.name: _columns(rows, layout.column_input, names)}
    if layout.feature_inputs:
        return caller_id, _per_input(rows, signature, layout.feature_inputs, names)
    return caller_id, _per_input(rows, signature, {i.name: i.name for i in signature.inputs}, [])


def _columns(rows: list[Any], spec: TensorSpec, names: list[str]) -> np.ndarray:
    known = set(names)
    matrix: list[list[Any]] = []
    for index, row in enumerate(rows):
        if isinstance(row, dict):
            if len(row) != len(names) or not known.issuperset(row):
                unknown = sorted(set(row) - known)
                missing = [n for n in names if n not in row]
                problem = (
                    f"unknown features {unknown}" if unknown else f"missing features {missing}"
                )
                raise InvalidInputError(f"instances[{index}]: {problem}")
            matrix.append([row[n] for n in names])
        elif isinstance(row, list):
            if len(row) != len(names):
                raise InvalidInputError(
                    f"instances[{index}]: has {len(row)} values, the model takes {len(names)} "
                    f"features {names}"
                )
            matrix.append(row)
        else:
            raise InvalidInputError(f"instances[{index}] must be an object or a list")
    return _to_array(matrix, spec, lambda i, j: f"instances[{i}] feature {names[j]!r}")


def _per_input(
    rows: list[Any], signature: Signature, inputs: Mapping[str, str], ordered: list[str]
) -> dict[str, np.ndarray]:
    """Rows keyed by the caller's names of the inputs (``inputs``: name -> input), or lists
    in the order of ``ordered`` when given."""
    expected = set(inputs)
    objects = []
    for index, row in enumerate(rows):
        if isinstance(row, list) and ordered:
            if len(row) != len(ordered):
                raise InvalidInputError(
                    f"instances[{index}]: has {len(row)} values, the model takes "
                    f"{len(ordered)} features {ordered}"
                )
            row = dict(zip(ordered, row, strict=True))
        if not isinstance(row, dict):
            raise InvalidInputError(f"instances[{index}] must be an object keyed by input name")
        if set(row) != expected:
            what = "features" if ordered else "inputs"
            raise InvalidInputError(
                f"instances[{index}]: expected {what} {sorted(expected)}, got {sorted(row)}"
            )
        objects.append(row)
    result = {}
    for name, input_name in inputs.items():
        spec = signature.input(input_name)
        assert spec is not None
        values = [row[name] for row in objects]
        array = _to_array(values, spec, lambda i, _j, n=name: f"instances[{i}] input {n!r}")
        if array.ndim == 1 and len(spec.shape) == 2 and spec.shape[1] in (1, -1):
            array = array.reshape(-1, 1)
        result[input_name] = array
    return result


def _to_array(values: list[Any], spec: TensorSpec, where: Any) -> np.ndarray:
    problem = check_scalars(values, spec.datatype)
    if problem is not None:
        raise InvalidInputError(_locate(values, spec, where) or problem)
    try:
        if spec.datatype == "BYTES":
            array = np.array(values, dtype=object)
            flat = array.reshape(-1)
            for i, value in enumerate(flat):
                if value is None:  # null: "" for the model, a missing value for the monitor
                    flat[i] = ""
                elif not isinstance(value, str):
                    raise TypeError("expected strings")
            return array
        return np.asarray(values, dtype=spec.dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(_locate(values, spec, where) or f"bad value: {exc}") from exc


def _locate(values: list[Any], spec: TensorSpec, where: Any) -> str | None:
    # Only on the error path: find the first value that does not convert, to name it.
    for i, row in enumerate(values):
        cells = row if isinstance(row, list) else [row]
        for j, cell in enumerate(cells):
            try:
                if spec.datatype == "BYTES":
                    ok = cell is None or isinstance(cell, str)
                else:
                    ok = not isinstance(cell, list | dict)
                    ok = ok and check_scalars([cell], spec.datatype) is None
                    np.asarray(cell, dtype=spec.dtype)
            except (ValueError, TypeError, OverflowError):
                ok = False
            if not ok:
                return f"{where(i, j)}: {cell!r} is not a valid {spec.datatype} value"
    return None


def render_predictions(
    model_name: str, model_version: str, caller_id: str | None, outputs: dict[str, np.ndarray]
) -> bytes:
    """One prediction object per row, holding that row of every output."""
    columns = {
        name: [_plain(v) for v in array.tolist()] if array.dtype.kind in "OSU" else array.tolist()
        for name, array in outputs.items()
    }
    rows = len(next(iter(columns.values()))) if columns else 0
    predictions = [{name: column[i] for name, column in columns.items()} for i in range(rows)]
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if caller_id is not None:
        doc["id"] = caller_id
    doc["predictions"] = predictions
    return orjson.dumps(doc)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
