"""Open Inference Protocol v2 inference requests and responses, JSON and binary tensor extension.

A binary request is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the
raw tensors of the inputs that declare ``binary_data_size``, in the order they are listed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import orjson

from gateway.errors import InvalidInputError
from gateway.protocol._json import MAX_DIMS, check_scalars, load_object, request_id
from gateway.serving import DATATYPE_TO_NUMPY, datatype_of

__all__ = [
    "InferRequest",
    "RequestedOutput",
    "parse_infer_body",
    "parse_infer_request",
    "render_infer_response",
]

_LE = {name: dtype.newbyteorder("<") for name, dtype in DATATYPE_TO_NUMPY.items()}


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the caller asked for, and whether it wants it as binary data."""

    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    """A parsed inference request: inputs as numpy arrays in the declared datatype and shape."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None
    binary_output: bool


def parse_infer_body(raw_header_length: bytes | None, body: bytes) -> InferRequest:
    """``parse_infer_request`` given the raw Inference-Header-Content-Length header (or None):
    nothing of the model is needed, so a parse process can run it."""
    header_length = None
    if raw_header_length is not None:
        raw_header_length = raw_header_length.strip()
        if not raw_header_length.isdigit() or len(raw_header_length) > 20:
            raise InvalidInputError(
                "Inference-Header-Content-Length must be an integer of at most 20 digits"
            )
        header_length = int(raw_header_length)
    return parse_infer_request(body, header_length)


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse a v2 infer body; ``header_length`` is the binary extension's JSON header size."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"of {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    doc = load_object(header)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInputError("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, raw in enumerate(raw_inputs):
        name, array, used = _parse_input(raw, index, binary, offset)
        if name in inputs:
            raise InvalidInputError(f"input {name!r} is given twice")
        inputs[name] = array
        offset += used
    if offset != len(binary):
        raise InvalidInputError(
            f"binary data is {len(binary)} bytes but the inputs declare {offset} bytes"
        )
    params = _parameters(doc, "request")
    binary_output = _flag(params, "binary_data_output", "request")
    outputs = _parse_outputs(doc.get("outputs"))
    return InferRequest(request_id(doc), inputs, outputs, binary_output)


def _parse_input(
    raw: Any, index: int, binary: memoryview, offset: int
) -> tuple[str, np.ndarray, int]:
    if not isinstance(raw, dict):
        raise InvalidInputError(f"inputs[{index}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"inputs[{index}] needs a 'name' string")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPE_TO_NUMPY:
        raise InvalidInputError(
            f"input {name!r}: datatype {datatype!r} is not one of {sorted(DATATYPE_TO_NUMPY)}"
        )
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInputError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise InvalidInputError(f"input {name!r}: more than {MAX_DIMS} dimensions")
    count = prod(shape)
    size = _parameters(raw, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInputError(f"input {name!r}: binary_data_size must be an integer >= 0")
        if offset + size > len(binary):
            raise InvalidInputError(
                f"input {name!r}: binary_data_size {size} runs past the end of the body"
            )
        if "data" in raw:
            raise InvalidInputError(f"input {name!r} has both 'data' and binary_data_size")
        array = _from_binary(name, datatype, count, binary[offset : offset + size])
        return name, _reshaped(name, array, shape), size
    if "data" not in raw:
        raise InvalidInputError(f"input {name!r} has no 'data'")
    return name, _from_json(name, datatype, shape, count, raw["data"]), 0


def _from_json(name: str, datatype: str, shape: list[int], count: int, data: Any) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    problem = check_scalars(data, datatype)
    if problem is not None:
        raise InvalidInputError(f"input {name!r}: {problem}")
    try:
        if datatype == "BYTES":
            array = np.array(data, dtype=object)
            flat = array.reshape(-1)
            for i, item in enumerate(flat):
                if item is None:  # null: "" for the model, a missing value for the monitor
                    flat[i] = ""
                elif type(item) is not str:
                    raise ValueError("nested lists of uneven lengths")
        else:
            array = np.asarray(data, dtype=DATATYPE_TO_NUMPY[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"input {name!r}: data does not fit {datatype}: {exc}") from exc
    if array.size != count:
        raise InvalidInputError(
            f"input {name!r}: shape {shape} needs {count} values, data has {array.size}"
        )
    return _reshaped(name, array, shape)


def _reshaped(name: str, array: np.ndarray, shape: list[int]) -> np.ndarray:
    """``array`` (of the shape's number of values) in ``shape``; a shape of no values may still
    have sizes no array can have (one over 2**63, or a product of the others that overflows)."""
    try:
        return array.reshape(shape)
    except ValueError as exc:
        raise InvalidInputError(f"input {name!r}: shape {shape} is too large for a tensor") from exc


def _from_binary(name: str, datatype: str, count: int, raw: memoryview) -> np.ndarray:
    if datatype == "BYTES":
        items: list[str] = []
        pos = 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise InvalidInputError(f"input {name!r}: truncated BYTES element length")
            (length,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + length > len(raw):
                raise InvalidInputError(f"input {name!r}: BYTES element runs past its data")
            try:
                items.append(bytes(raw[pos : pos + length]).decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InvalidInputError(f"input {name!r}: BYTES element is not UTF-8") from exc
            pos += length
        if len(items) != count:
            raise InvalidInputError(
                f"input {name!r}: shape needs {count} elements, binary data has {len(items)}"
            )
        array = np.empty(count, dtype=object)
        array[:] = items
        return array
    dtype = _LE[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInputError(
            f"input {name!r}: shape needs {count * dtype.itemsize} bytes of {datatype}, "
            f"binary_data_size is {len(raw)}"
        )
    # Copy: the body buffer must not stay pinned by a tensor that outlives the request.
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)


def _parse_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInputError("'outputs' must be a list")
    result: dict[str, RequestedOutput] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInputError(f"outputs[{index}] needs a 'name' string")
        name = item["name"]
        # each copy would be rendered again: a list of one output 300,000 times in a 16 MiB
        # body would make an answer of hundreds of gigabytes
        if name in result:
            raise InvalidInputError(f"output {name!r} is requested twice")
        params = _parameters(item, f"output {name!r}")
        result[name] = RequestedOutput(name, _flag(params, "binary_data", f"output {name!r}"))
    return list(result.values())


def _parameters(doc: dict[str, Any], where: str) -> dict[str, Any]:
    params = doc.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInputError(f"{where}: 'parameters' must be an object")
    return params


def _flag(params: dict[str, Any], key: str, where: str) -> bool:
    """A boolean parameter, false when absent; "true" or 1 would otherwise be read as false, in
    silence (the answer in JSON where the caller asked for binary)."""
    value = params.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInputError(
            f"{where}: parameter {key} must be true or false, not {value!r:.50}"
        )
    return value


def render_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """Encode a response; returns the body and, for a binary body, its JSON header length."""
    if request.outputs is None:
        chosen = [(name, request.binary_output) for name in outputs]
    else:
        chosen = [(o.name, o.binary or request.binary_output) for o in request.outputs]
    rendered: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for name, binary in chosen:
        array = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": array.shape,
        }
        if binary:
            raw = _to_binary(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        elif array.dtype.kind in "OUS":
            entry["data"] = [_text(v) for v in array.reshape(-1).tolist()]
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        rendered.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = rendered
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return header, None
    return b"".join([header, *buffers]), len(header)


def _to_binary(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OUS":
        parts = []
        for value in array.reshape(-1).tolist():
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
