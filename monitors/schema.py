"""The inference-log record: what the gateway writes to Kafka and the monitor reads.

One record per served request (and one per shadow request), JSON encoded with orjson. A Kafka
message holds the records of one model, keyed by model name so one model's records keep their
order in one partition. Features and outputs are column-oriented: ``features[name][i]`` is row
``i`` of the request.

Record fields (``?`` = may be absent):

===============  ==============================================================================
schema_version   the version of the message the record was read from (1 or 2)
request_id       unique id of the request (the caller's OIP ``id`` when given, else a UUID4)
time             event time, seconds since the epoch (float, UTC), when the request arrived
endpoint         name the caller used (``/v2/models/{endpoint}/infer``)
model, version   the model version that served it
variant          traffic variant (``default`` when the endpoint has one)
role             ``primary`` or ``shadow``
rows             number of rows (instances) in the request
features?        ``{feature name: [value per row]}``, decoded with the model's metadata (absent
                 when the request failed before its input was read, e.g. ``invalid``)
inputs?          ``{input name: {"datatype", "shape", "data"}}`` for inputs without feature names
outputs?         ``{output name: [value per row]}`` (a row may itself be a list, e.g. scores)
latency_s        seconds from arrival to answer
status           ``ok``, ``invalid``, ``rejected``, ``timeout``, ``error``, ``cancelled``
                 (the caller went away before its answer)
error?           the error message when status is not ``ok``
routing_key?     the caller's routing key when one was sent
comparison?      shadow records only: ``{"primary_variant", "agreement", "max_abs_diff"}``, how
                 the shadow's outputs compare with the primary's on the same rows
part?            a request too large for one Kafka message is logged as several records, its
                 rows in order: ``{"index", "count", "first_row"}`` of this part (same
                 ``request_id``; ``rows`` is the part's)
omitted?         fields left out (``features``, ``inputs``, ``outputs``) or cut to 1,024
                 characters (a long ``routing_key``...) because a row alone would not fit in a
                 Kafka message
===============  ==============================================================================

**Version 2** (what the gateway writes): one JSON object per message, the records as columns,
so a consumer parses a few long lists instead of dozens of small objects per record::

    {"schema_version": 2, "records": N,
     "fields": {"request_id": [N values], "time": [...], ...},  # the fields every record has
     "sparse": {"error": {"3": "...", "7": "..."}},  # the others: record index -> value
     "features": [block, ...], "outputs": [block, ...]}
    block: {"records": [i, ...],           # which records (ascending); omitted: all of them
            "lengths": [n, ...],           # values per record; omitted: each record's rows
            "columns": {"name": [the values of every row of those records, in order]}}

The records with the same feature names share a block (usually one per message); a record
without features is in none. A block of one record holds its columns as they are. Decoding
gives back the records exactly as version 1 would (``decode_records``), or the columns
themselves (``decode_columns``, the monitor's path).

**Version 1** (still read): one JSON object per record, records separated by newlines (JSON
text never holds a raw newline), ``schema_version`` 1 in each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict, cast

import orjson

from monitors._columnar import (
    VERSION,
    Block,
    FeatureMatrix,
    IrregularRecordsError,
    MessageColumns,
    columns_of,
    from_json,
    to_json,
    to_records,
)

__all__ = [
    "SCHEMA_VERSION",
    "Block",
    "FeatureMatrix",
    "InferenceRecord",
    "MessageColumns",
    "RecordError",
    "columns_of",
    "decode_columns",
    "decode_record",
    "decode_records",
    "encode_record",
    "encode_records",
    "message_records",
]

SCHEMA_VERSION = VERSION  # what encode_records writes
_LINES = 1  # version 1: a record per line

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
    # lists once decoded; numpy arrays, or a FeatureMatrix, before encoding
    features: Mapping[str, Any]
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, Any]
    latency_s: float
    status: Status
    error: str | None
    routing_key: str | None
    comparison: dict[str, Any]
    part: dict[str, int]
    omitted: list[str]


_REQUIRED_KEYS = frozenset(("request_id", "time", "model", "version", "role", "rows", "status"))
_HEAD = re.compile(rb'\{"schema_version":2,"records":(\d+),')


class RecordError(ValueError):
    """A log record that does not follow the schema."""


def encode_records(records: Sequence[InferenceRecord]) -> bytes:
    """One Kafka message holding records of one model, in order (version 2, columns)."""
    try:
        return to_json(columns_of(records, for_json=True))
    except IrregularRecordsError:  # features that are not objects: version 1 holds anything
        lines = (cast(InferenceRecord, {**r, "schema_version": _LINES}) for r in records)
        return b"\n".join(map(encode_record, lines))


def encode_record(record: InferenceRecord) -> bytes:
    """JSON bytes of one record, a version 1 line (numpy arrays are serialised natively)."""
    return orjson.dumps(record, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY)


def _plain(value: object) -> object:
    if isinstance(value, FeatureMatrix):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def message_records(message: bytes) -> int:
    """How many records a message of this schema holds, read from its head, not parsed."""
    head = _HEAD.match(message)
    return int(head[1]) if head is not None else message.count(b"\n") + 1


def decode_records(message: bytes, *, features: bool = True) -> list[InferenceRecord]:
    """Every record of one Kafka message, of either version; raises RecordError. Without
    ``features`` the records leave them out (the ground-truth join needs none: for a version 2
    message it then skips most of the per-record work)."""
    version, doc = _parse(message)
    if version == VERSION:
        columns = _columns(doc)
        if not features:
            columns.features = []
        return cast(list[InferenceRecord], to_records(columns))
    records = _lines(message, doc)
    if not features:
        for record in records:
            record.pop("features", None)
    return records


def decode_columns(message: bytes) -> MessageColumns:
    """The records of one Kafka message as columns, of either version; raises RecordError.

    The monitor's path: a version 2 message needs no step per record or value.
    """
    version, doc = _parse(message)
    if version == VERSION:
        return _columns(doc)
    try:
        return columns_of(_lines(message, doc), version=_LINES)
    except IrregularRecordsError as exc:
        raise RecordError(str(exc)) from exc


def decode_record(raw: bytes) -> InferenceRecord:
    """Parse and check one version 1 record; raises RecordError naming what is wrong."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"record is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RecordError("record is not a JSON object")
    version = doc.get("schema_version")
    if version != _LINES:
        raise RecordError(f"unsupported schema_version {version!r} in a line (expected 1)")
    if not doc.keys() >= _REQUIRED_KEYS:
        raise RecordError(f"record lacks {sorted(_REQUIRED_KEYS - doc.keys())}")
    record: InferenceRecord = doc  # type: ignore[assignment]
    return record


def _parse(message: bytes) -> tuple[object, Any]:
    """(schema_version, document) of a message that is one JSON object, else (None, None)."""
    try:
        doc = orjson.loads(message)
    except orjson.JSONDecodeError:  # several lines (version 1), or not JSON at all
        return None, None
    return (doc.get("schema_version") if type(doc) is dict else None), doc


def _columns(doc: Any) -> MessageColumns:
    try:
        return from_json(doc, _REQUIRED_KEYS)
    except (ValueError, TypeError) as exc:
        raise RecordError(f"version 2 message: {exc}") from exc


def _lines(message: bytes, doc: Any) -> list[InferenceRecord]:
    """The records of a version 1 message (``doc``: the message parsed, when it is one line)."""
    if type(doc) is dict and doc.get("schema_version") == _LINES and doc.keys() >= _REQUIRED_KEYS:
        return [doc]  # type: ignore[list-item]
    try:  # one parse for the whole message
        docs = orjson.loads(b"[" + message.strip().replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError:
        docs = None
    if isinstance(docs, list) and all(
        type(d) is dict and d.get("schema_version") == _LINES and d.keys() >= _REQUIRED_KEYS
        for d in docs
    ):
        return docs
    # something is wrong: decode line by line to say which record and what
    return [decode_record(line) for line in message.split(b"\n") if line.strip()]
