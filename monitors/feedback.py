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
                (printable, at most 256 characters)
row             the row of a multi-row request, from 0 (default 0) and below 2**24 (no record
                holds more rows)
labels          ``{output name: true value}``, at least one; for a classifier's label output the
                class name from the model's ``class_labels`` (what the gateway writes) or an
                index into the model's class space (``monitors.class_space``: one version's
                order, so a name is the safer form), for a regression output a finite number
time?           when the outcome was observed or reported, seconds since the epoch (default:
                the Kafka message's timestamp); at most an hour ahead of the reader's clock
                (the join counts one older than the predictions it keeps as too old)
source?         who reported it (free text, at most 256 characters; the monitor leaves out one
                that is not)
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
    "MAX_SOURCE_CHARS",
    "FeedbackError",
    "FeedbackRecord",
    "check_feedback",
    "decode_feedback",
    "encode_feedback",
    "feedback_message_records",
    "id_problem",
    "label_problem",
    "labels_problem",
    "pack_feedback",
    "row_problem",
    "source_problem",
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
# "who reported it": a name, not a document. An unbounded one made a record the broker refuses
# (over its message size): accepted by the gateway, then dead-lettered, its label never joined.
MAX_SOURCE_CHARS = 256
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


# The rules of a record's fields, one function each, shared by the gateway's feedback endpoint
# (which names the item: "item 3: ...") and the monitor's reader (which names the line), so that
# neither can accept what the other refuses. Each returns what is wrong, or None.


def id_problem(request_id: object, field: str) -> str | None:
    """What is wrong with a request id given as ``field`` (None if nothing): it is what the
    gateway answers with as x-request-id, printable text of at most ``MAX_REQUEST_ID_CHARS``."""
    if not isinstance(request_id, str) or not request_id or not request_id.isprintable():
        return f"{field} must be the request id (x-request-id): non-empty printable text"
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        return f"{field} is over {MAX_REQUEST_ID_CHARS} characters: no request has such an id"
    return None


def row_problem(row: object) -> str | None:
    """What is wrong with a label's ``row`` (None if nothing): an integer below
    ``MAX_LABEL_ROWS``."""
    if type(row) is not int or not 0 <= row < MAX_LABEL_ROWS:
        return f"row must be an integer from 0 to {MAX_LABEL_ROWS - 1}"
    return None


def label_problem(output: str, label: object) -> str | None:
    """What is wrong with the true value of ``output`` (None if nothing): text (a class name) or
    a finite number of at most ``MAX_LABEL_MAGNITUDE`` in magnitude."""
    if isinstance(label, bool) or not isinstance(label, int | float | str):
        return f"label of {output!r} must be a number or text"
    if isinstance(label, float) and not math.isfinite(label):
        return f"label of {output!r} must be finite"
    if not isinstance(label, str) and abs(label) > MAX_LABEL_MAGNITUDE:
        return f"label of {output!r} is over {MAX_LABEL_MAGNITUDE:g} in magnitude"
    return None


def labels_problem(labels: object) -> str | None:
    """What is wrong with ``labels`` (None if nothing): a non-empty ``{output: label}`` whose
    every label passes ``label_problem``. Which outputs take labels is the gateway's to say."""
    if not isinstance(labels, dict) or not labels:
        return "labels must be a non-empty object {output: value}"
    for output, label in labels.items():
        problem = label_problem(output, label)
        if problem is not None:
            return problem
    return None


def source_problem(source: object) -> str | None:
    """What is wrong with a label's ``source`` (None if nothing): absent (None) or text of at
    most ``MAX_SOURCE_CHARS``."""
    if source is not None and not isinstance(source, str):
        return "source must be text"
    if source is not None and len(source) > MAX_SOURCE_CHARS:
        return f"source is over {MAX_SOURCE_CHARS} characters"
    return None


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
    row, labels = doc.get("row", 0), doc.get("labels")
    time = doc.get("time", default_time)
    # Against the reader's own clock: a producer sets the message's timestamp, so a stamp far
    # ahead would carry its records (and one that gives no time takes the stamp) past the bound.
    problem = (
        id_problem(request_id, "request_id")
        or row_problem(row)
        or labels_problem(labels)
        or time_problem(time, wall_clock())
    )
    if problem is not None:
        raise FeedbackError(problem)
    record: FeedbackRecord = {
        "schema": FEEDBACK_SCHEMA,
        "model": model,
        "request_id": doc["request_id"],  # present: checked above
        "row": row,
        "labels": doc["labels"],
        "time": float(time),
    }
    # Nothing the monitor does reads the source: one that breaks its rule is left out, not the
    # label with it.
    source = doc.get("source")
    if source is not None and source_problem(source) is None:
        record["source"] = source
    return record
