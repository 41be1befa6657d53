"""The inference-log record: what the gateway writes to Kafka and the monitor reads.

One record per served request (and one per shadow request), JSON encoded with orjson. A Kafka
message holds one or more records of one model, separated by newlines (JSON text never holds a
raw newline), keyed by model name so one model's records keep their order in one partition.
Features and outputs are column-oriented: ``features[name][i]`` is row ``i`` of the request, so
a consumer can stack the records of a window into arrays without a Python loop per value.

Version 1 fields (``?`` = may be absent or null):

===============  ==============================================================================
schema_version   1
request_id       unique id of the request (the caller's OIP ``id`` when given, else a UUID4)
time             event time, seconds since the epoch (float, UTC), when the request arrived
endpoint         name the caller used (``/v2/models/{endpoint}/infer``)
model, version   the model version that served it
variant          traffic variant (``default`` when the endpoint has one)
role             ``primary`` or ``shadow``
rows             number of rows (instances) in the request
features         ``{feature name: [value per row]}``, decoded with the model's metadata
inputs?          ``{input name: {"datatype", "shape", "data"}}`` for inputs without feature names
outputs          ``{output name: [value per row]}`` (a row may itself be a list, e.g. scores)
latency_s        seconds from arrival to answer
status           ``ok``, ``invalid``, ``rejected``, ``timeout``, ``error``, ``cancelled``
                 (the caller went away before its answer)
error?           the error message when status is not ``ok``
routing_key?     the caller's routing key when one was sent
comparison?      shadow records only: ``{"primary_variant", "agreement", "max_abs_diff"}``, how
                 the shadow's outputs compare with the primary's on the same rows
===============  ==============================================================================
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import orjson

__all__ = [
    "SCHEMA_VERSION",
    "InferenceRecord",
    "RecordError",
    "decode_record",
    "decode_records",
    "encode_record",
]

SCHEMA_VERSION = 1

Status = Literal["ok", "invalid", "rejected", "timeout", "error", "cancelled"]


class InferenceRecord(TypedDict, total=False):
    schema_version: int
    request_id: str
    time: float
    endpoint: str
    model: str
    version: str
    variant: str
    role: Literal["primary", "shadow"]
    rows: int
    features: dict[str, Any]  # lists once decoded; numpy arrays before encoding
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, Any]
    latency_s: float
    status: Status
    error: str | None
    routing_key: str | None
    comparison: dict[str, Any]


_REQUIRED_KEYS = frozenset(("request_id", "time", "model", "version", "role", "rows", "status"))


class RecordError(ValueError):
    """A log record that does not follow the schema."""


def encode_record(record: InferenceRecord) -> bytes:
    """JSON bytes of a record (numpy arrays inside are serialised natively)."""
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_record(raw: bytes) -> InferenceRecord:
    """Parse and check a record; raises RecordError naming what is wrong."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"record is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RecordError("record is not a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(f"unsupported schema_version {version!r} (expected {SCHEMA_VERSION})")
    if not doc.keys() >= _REQUIRED_KEYS:
        raise RecordError(f"record lacks {sorted(_REQUIRED_KEYS - doc.keys())}")
    record: InferenceRecord = doc  # type: ignore[assignment]
    return record


def decode_records(message: bytes) -> list[InferenceRecord]:
    """Every record of one Kafka message (newline-separated); raises RecordError."""
    try:  # one parse for the whole message: the monitor's hot path
        docs = orjson.loads(b"[" + message.strip().replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError:
        docs = None
    if isinstance(docs, list) and all(
        type(d) is dict and d.get("schema_version") == SCHEMA_VERSION and d.keys() >= _REQUIRED_KEYS
        for d in docs
    ):
        return docs
    # something is wrong: decode line by line to say which record and what
    return [decode_record(line) for line in message.split(b"\n") if line.strip()]
