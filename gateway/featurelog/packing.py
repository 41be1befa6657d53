"""Kafka messages from log records: per model, in order, each under ``max_message_bytes``.

A broker refuses a message over its ``message.max.bytes`` (1 MB by default), so a message
holds up to 100 records of one model while their estimated size fits, and one that still
encodes over the bound is halved. A record over the bound on its own (a request of 100,000
rows) is split by rows into parts, each with ``part`` (index, count, first row); a row that
alone is too large, or a record that cannot be split (a huge routing key), is logged without
its features, inputs and outputs and with its long strings cut, ``omitted`` naming what went.

This is CPU work proportional to what clients send: the feature log runs it off the event loop
for large batches. Each encode call covers about one message, so a worker thread doing it gives
the event loop the interpreter back between messages.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np

from monitors.schema import FeatureMatrix, InferenceRecord, encode_records

__all__ = ["Message", "Packer", "estimate_bytes", "pack", "pack_messages"]

# (key, value, records in it)
Message = tuple[bytes, bytes, int]

RECORDS_PER_MESSAGE = 100
# Room for the Kafka record's own framing (lengths, offsets, timestamp, headers) in the bound.
_FRAMING_BYTES = 128
_ROW_FIELDS = ("features", "inputs", "outputs")
_MAX_STRING = 1024  # characters kept of a string field when a record must be cut


def pack_messages(
    records: Iterable[tuple[bytes, InferenceRecord]], max_message_bytes: int = 1_000_000
) -> list[Message]:
    """Kafka messages of (key, record) pairs, per key (the model) in order, each at most
    ``max_message_bytes``."""
    return pack(records, max_message_bytes).messages


def pack(
    records: Iterable[tuple[bytes, InferenceRecord]],
    max_message_bytes: int,
    estimates: Iterable[int] | None = None,
) -> Packer:
    """``pack_messages``, also saying how many records were split by rows and how many cut;
    ``estimates``: each record's ``estimate_bytes``, when the caller has them already."""
    records = list(records)
    sizes = list(estimates) if estimates is not None else [estimate_bytes(r) for _, r in records]
    groups: dict[bytes, list[tuple[InferenceRecord, int]]] = {}
    for (key, record), size in zip(records, sizes, strict=True):
        groups.setdefault(key, []).append((record, size))
    packer = Packer(max_message_bytes)
    for key, group in groups.items():
        packer.add_group(key, group)
    return packer


class Packer:
    """Messages under a size bound, and the count of records split or cut to fit it."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.messages: list[Message] = []
        self.split = 0
        self.cut = 0

    def add_group(self, key: bytes, group: list[tuple[InferenceRecord, int]]) -> None:
        """One key's records (with their estimated sizes), in order."""
        limit = self.max_message_bytes - len(key) - _FRAMING_BYTES
        chunk: list[InferenceRecord] = []
        size = 0
        for record, estimate in group:
            if estimate > limit:
                self._flush(key, chunk, limit)
                chunk, size = [], 0
                self._oversized(key, record, limit, estimate)
                continue
            if chunk and (len(chunk) >= RECORDS_PER_MESSAGE or size + estimate > limit):
                self._flush(key, chunk, limit)
                chunk, size = [], 0
            chunk.append(record)
            size += estimate
        self._flush(key, chunk, limit)

    def _flush(self, key: bytes, chunk: list[InferenceRecord], limit: int) -> None:
        if not chunk:
            return
        value = encode_records(chunk)
        if len(value) <= limit:
            self.messages.append((key, value, len(chunk)))
        elif len(chunk) > 1:  # the estimate was short: halve until each half fits
            half = len(chunk) // 2
            self._flush(key, chunk[:half], limit)
            self._flush(key, chunk[half:], limit)
        else:
            self._oversized(key, chunk[0], limit, len(value))

    def _oversized(self, key: bytes, record: InferenceRecord, limit: int, size: int) -> None:
        """One record over the bound: cut its long strings, then split it by rows, then drop
        its per-row fields, whichever comes first to fit."""
        shortened = _cut_strings(record)
        if shortened is not record:
            record = shortened
            value = encode_records([record])
            if len(value) <= limit:
                self.messages.append((key, value, 1))
                self.cut += 1
                return
            size = len(value)
        rows = _splittable_rows(record)
        if rows > 1:
            per_part = max(1, int(rows * limit / size * 0.9))
            while True:
                values = _parts(record, rows, per_part, limit)
                if values is not None:
                    self.messages.extend((key, value, 1) for value in values)
                    self.split += 1
                    return
                if per_part == 1:
                    break
                per_part = max(1, per_part // 2)
        self.messages.append((key, encode_records([_without_rows(record)]), 1))
        self.cut += 1


def _parts(record: InferenceRecord, rows: int, per_part: int, limit: int) -> list[bytes] | None:
    """The encoded parts of ``per_part`` rows each, or None when one of them is over ``limit``."""
    count = math.ceil(rows / per_part)
    values: list[bytes] = []
    for index in range(count):
        start = index * per_part
        part = _slice(record, start, min(rows, start + per_part))
        part["part"] = {"index": index, "count": count, "first_row": start}
        value = encode_records([cast(InferenceRecord, part)])
        if len(value) > limit:
            return None
        values.append(value)
    return values


def _splittable_rows(record: InferenceRecord) -> int:
    """The record's rows when every per-row field has that many (so it splits by rows), else 0."""
    rows = record.get("rows")
    if not isinstance(rows, int) or rows < 2:
        return 0
    for field in ("features", "outputs"):
        value = record.get(field)
        if isinstance(value, FeatureMatrix):
            if len(value.matrix) != rows:
                return 0
        elif isinstance(value, Mapping):
            if any(not _sized(column, rows) for column in value.values()):
                return 0
        elif value is not None:
            return 0
    for spec in (record.get("inputs") or {}).values():
        shape = spec.get("shape") if isinstance(spec, Mapping) else None
        if not shape or shape[0] != rows or not _sized(spec.get("data"), math.prod(shape)):
            return 0
    return rows


def _sized(column: object, length: int) -> bool:
    return isinstance(column, np.ndarray | list) and len(column) == length


def _slice(record: InferenceRecord, start: int, stop: int) -> dict[str, Any]:
    part: dict[str, Any] = {**record, "rows": stop - start}
    for field in ("features", "outputs"):
        value = record.get(field)
        if isinstance(value, FeatureMatrix):
            part[field] = FeatureMatrix(value.names, value.matrix[start:stop])
        elif isinstance(value, Mapping):
            part[field] = {name: column[start:stop] for name, column in value.items()}
    inputs = record.get("inputs")
    if inputs:
        sliced: dict[str, dict[str, Any]] = {}
        for name, spec in inputs.items():
            shape = list(spec["shape"])
            per_row = math.prod(shape[1:])
            data = spec["data"][start * per_row : stop * per_row]
            sliced[name] = {**spec, "shape": [stop - start, *shape[1:]], "data": data}
        part["inputs"] = sliced
    return part


def _cut_strings(record: InferenceRecord) -> InferenceRecord:
    """The record with string fields over 1,024 characters cut (``omitted`` names them), or
    the record itself when it has none."""
    long = [n for n, v in record.items() if isinstance(v, str) and len(v) > _MAX_STRING]
    if not long:
        return record
    cut: dict[str, Any] = dict(record)
    for name in long:
        cut[name] = cut[name][:_MAX_STRING]
    cut["omitted"] = [*record.get("omitted", []), *long]
    return cast(InferenceRecord, cut)


def _without_rows(record: InferenceRecord) -> InferenceRecord:
    """The record without its features, inputs and outputs; ``omitted`` says which went."""
    kept: dict[str, Any] = {k: v for k, v in record.items() if k not in _ROW_FIELDS}
    dropped = [name for name in _ROW_FIELDS if name in record]
    kept["omitted"] = [*dropped, *record.get("omitted", [])]
    return cast(InferenceRecord, kept)


def estimate_bytes(record: InferenceRecord) -> int:
    """About the JSON size of a record, erring large where it can be large (the per-row data,
    the strings a client sends); cheap, as it runs for every record. The encoded size is
    checked anyway: an estimate only saves encoding a huge record whole."""
    size = 512 + 2 * (
        len(record.get("request_id", ""))
        + len(record.get("routing_key") or "")
        + len(record.get("error") or "")
        + len(record.get("endpoint", ""))
    )
    features = record.get("features")
    if type(features) is FeatureMatrix:
        size += features.matrix.nbytes * 4 + 32 * len(features.names)
    elif features:
        size += _columns_bytes(features)
    outputs = record.get("outputs")
    if outputs:
        size += _columns_bytes(outputs)
    inputs = record.get("inputs")
    if inputs:
        size += _columns_bytes(inputs)
    return size


def _columns_bytes(columns: Mapping[str, Any]) -> int:
    size = 0
    for value in columns.values():
        if type(value) is np.ndarray:
            size += value.nbytes * 4  # a float32 as text: up to 15 characters and a comma
        elif type(value) is list:
            size += 24 * len(value)  # text may be longer: the encoded size is checked anyway
        elif type(value) is dict:
            size += _columns_bytes(value)
        elif type(value) is str:
            size += 2 * len(value)
    return size + 32 * len(columns)
