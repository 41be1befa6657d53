"""The feedback record: ground truth for served predictions, what the gateway's feedback endpoint
writes to the feedback topic and the monitor joins to the inference log (the contract).

A system that already publishes outcomes may write these records to the topic itself. A Kafka
message holds one or more records of one model as JSON objects, one per line (UTF-8, no blank
lines), keyed by the model (endpoint) name, so a model's feedback lands on the partition of the
same number as its predictions when the feedback topic has as many partitions as the inference
log (the monitor assigns both topics' partitions of one number to one instance).

Record fields (``?`` = may be absent):

==============  ================================================================================
schema          ``"feedback/1"``
model           the endpoint the prediction was asked of (``/v2/models/{model}/infer``)
request_id      the prediction's request id: the ``x-request-id`` the gateway answered with
                (at most 256 characters)
row             the row of a multi-row request, from 0 (default 0) and below 2**24 (no record
                holds more rows)
labels          ``{output name: true value}``, at least one; for a classifier's label output the
                class name from the model's ``class_labels`` (what the gateway writes) or an
                index into the model's class space (``monitors.class_space``: one version's
                order, so a name is the safer form), for a regression output a finite number
time?           when the outcome was observed or reported, seconds since the epoch (default:
                the Kafka message's timestamp); at most an hour ahead of the reader's clock
source?         who reported it (free text)
==============  ================================================================================

Example message value (two records)::

    {"schema":"feedback/1","model":"breast_cancer","request_id":"9f2c-1a","row":0,"labels":{"label":"benign"},"time":1767225600.0}
    {"schema":"feedback/1","model":"breast_cancer","request_id":"9f2c-1b","row":0,"labels":{"label":"malignant"},"time":1767225601.5}
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from time import time as wall_clock
from typing import NotRequired, TypedDict

import orjson

__all__ = [
    "FEEDBACK_SCHEMA",
    "MAX_FUTURE_S",
    "MAX_LABEL_MAGNITUDE",
    "MAX_LABEL_ROWS",
    "MAX_REQUEST_ID_CHARS",
    "FeedbackError",
    "FeedbackRecord",
    "check_feedback",
    "decode_feedback",
    "encode_feedback",
    "feedback_message_records",
    "pack_feedback",
    "time_problem",
]

FEEDBACK_SCHEMA = "feedback/1"
# A request id is the gateway's own (the x-request-id it answered with, about 20 characters);
# this bound is far above it, and a longer id can match no prediction.
MAX_REQUEST_ID_CHARS = 256
# How far ahead of the clock that checks it (the gateway's, the monitor's) a record's time may
# lie: clock skew between systems. A time further ahead would move the monitor's label clock
# into the future for good and expire every label waiting for its prediction at once.
MAX_FUTURE_S = 3600.0
# A label's row is below this: the rows a served record may hold (``monitors.batch``'s
# MAX_RECORD_ROWS is this one). A larger row joins no prediction, and one of 2**63 or more
# does not fit the join store's integer column.
MAX_LABEL_ROWS = 1 << 24
# A numeric label's largest magnitude: the join keeps running sums of squared errors, and one
# error past about 1e154 squares to infinity, which no later label can take back.
MAX_LABEL_MAGNITUDE = 1e100
_RECORDS_PER_MESSAGE = 500
_FRAMING_BYTES = 128  # the Kafka record's own framing, kept out of the bound

Label = int | float | str


class FeedbackRecord(TypedDict):
    schema: str
    model: str
    request_id: str
    row: int
    labels: dict[str, Label]
    time: NotRequired[float]
    source: NotRequired[str]


class FeedbackError(ValueError):
    """A feedback record that does not follow the schema."""


def encode_feedback(records: Iterable[FeedbackRecord]) -> bytes:
    """One Kafka message value: the records as JSON lines."""
    return b"\n".join(orjson.dumps(r) for r in records)


def feedback_message_records(value: bytes) -> int:
    """How many records a message value holds (its lines), without parsing it."""
    return value.count(b"\n") + 1


def pack_feedback(
    items: Iterable[tuple[bytes, FeedbackRecord]], max_message_bytes: int = 1_000_000
) -> list[tuple[bytes, bytes, int]]:
    """Kafka messages (key, value, records) of (key, record) pairs: per key, in order, up to 500
    records a message and at most ``max_message_bytes`` (a record alone over it goes alone)."""
    groups: dict[bytes, list[bytes]] = {}
    for key, record in items:
        groups.setdefault(key, []).append(orjson.dumps(record))
    messages = []
    for key, lines in groups.items():
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and (
                len(chunk) >= _RECORDS_PER_MESSAGE
                or size + len(line) + 1 > max_message_bytes - _FRAMING_BYTES
            ):
                messages.append((key, b"\n".join(chunk), len(chunk)))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        if chunk:
            messages.append((key, b"\n".join(chunk), len(chunk)))
    return messages


def decode_feedback(value: bytes, default_time: float) -> tuple[list[FeedbackRecord], list[str]]:
    """The valid records of a message value and what was wrong with each invalid line."""
    records: list[FeedbackRecord] = []
    problems: list[str] = []
    for number, line in enumerate(value.split(b"\n")):
        if not line.strip():
            continue
        try:
            records.append(check_feedback(orjson.loads(line), default_time))
        except orjson.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON: {exc}")
        except FeedbackError as exc:
            problems.append(f"line {number}: {exc}")
    return records, problems


def time_problem(time: object, now: float) -> str | None:
    """What is wrong with a label's event ``time`` (None if nothing): it is seconds since the
    epoch, at most ``MAX_FUTURE_S`` ahead of ``now`` (the checker's clock)."""
    if isinstance(time, bool) or not isinstance(time, int | float) or not math.isfinite(time):
        return "time must be a number (seconds since the epoch)"
    if time - now > MAX_FUTURE_S:
        return (
            f"time is {time - now:.0f} s ahead of this clock (at most {MAX_FUTURE_S:.0f} s of "
            "clock skew)"
        )
    return None


def check_feedback(doc: object, default_time: float) -> FeedbackRecord:
    """A parsed record checked against the schema (time filled in); raises FeedbackError."""
    if not isinstance(doc, dict):
        raise FeedbackError("a feedback record is a JSON object")
    if doc.get("schema") != FEEDBACK_SCHEMA:
        raise FeedbackError(f"schema must be {FEEDBACK_SCHEMA!r}, not {doc.get('schema')!r}")
    model, request_id = doc.get("model"), doc.get("request_id")
    if not isinstance(model, str) or not model:
        raise FeedbackError("model must be a non-empty string")
    if not isinstance(request_id, str) or not request_id:
        raise FeedbackError("request_id must be a non-empty string")
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise FeedbackError(f"request_id is over {MAX_REQUEST_ID_CHARS} characters")
    row = doc.get("row", 0)
    if type(row) is not int or not 0 <= row < MAX_LABEL_ROWS:
        raise FeedbackError(f"row must be an integer from 0 to {MAX_LABEL_ROWS - 1}")
    labels = doc.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise FeedbackError("labels must be a non-empty object {output: value}")
    for name, label in labels.items():
        if isinstance(label, bool) or not isinstance(label, int | float | str):
            raise FeedbackError(f"label of {name!r} must be a number or a string")
        if isinstance(label, float) and not math.isfinite(label):
            raise FeedbackError(f"label of {name!r} must be finite")
        if not isinstance(label, str) and abs(label) > MAX_LABEL_MAGNITUDE:
            raise FeedbackError(f"label of {name!r} is over {MAX_LABEL_MAGNITUDE:g} in magnitude")
    time = doc.get("time", default_time)
    # Against the reader's own clock: a producer sets the message's timestamp, so a stamp far
    # ahead would carry its records (and one that gives no time takes the stamp) past the bound.
    problem = time_problem(time, wall_clock())
    if problem is not None:
        raise FeedbackError(problem)
    record: FeedbackRecord = {
        "schema": FEEDBACK_SCHEMA,
        "model": model,
        "request_id": request_id,
        "row": row,
        "labels": labels,
        "time": float(time),
    }
    if isinstance(doc.get("source"), str):
        record["source"] = doc["source"]
    return record
