"""Records of one model version as columns, the windows' input: per-record arrays (rows, event
time, Kafka offset) and, per feature of the reference profile, the values of every row in one
array, with where each record's values start.

Built from messages' columns (``monitors.schema.decode_columns``) with one numpy call per column
of a consumer poll, never a Python step per value: the monitor's hot path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from time import time as wall_clock
from typing import Any, get_args

import numpy as np

from monitors.feedback import MAX_FUTURE_S, MAX_LABEL_ROWS
from monitors.profile import ModelProfile
from monitors.schema import Block, MessageColumns, Status, columns_of

__all__ = ["MAX_RECORD_ROWS", "Column", "Part", "RecordBatch", "served_primaries", "well_formed"]

_PREDICTION = "prediction:"
# More rows than a record can honestly hold (a 16 MiB request body of one-byte values). What a
# record's rows cost the windows does not grow with them: a missing feature's rows are counted
# (``Column.absent``), and a count window cuts a record of many panes once per pane.
MAX_RECORD_ROWS = MAX_LABEL_ROWS
_REASONS = frozenset(("shadow", *get_args(Status)))
Values = Sequence[Any] | np.ndarray
Convert = Callable[[Values], np.ndarray]


@dataclass(frozen=True, slots=True)
class Part:
    """The records of one message that go to one model version's windows."""

    message: MessageColumns
    records: np.ndarray | None  # their indices in the message, ascending; None: all of them
    offsets: np.ndarray  # the Kafka offset of each (int64)

    def __len__(self) -> int:
        return len(self.offsets)


def served_primaries(
    message: MessageColumns, offset: int
) -> tuple[dict[tuple[str, str], Part], dict[str, int]]:
    """The message's records served by a primary (status ok), by model version, and how many
    other records it holds, by why they are not: ``shadow``, the status of a request that
    failed (``invalid``, ``rejected``, ``timeout``, ``error``, ``cancelled``), or ``malformed``
    (a served record whose model or version is not text, whose rows are not a count from 0 to
    ``MAX_RECORD_ROWS``, or whose time is not a number, is before the epoch or lies over
    ``MAX_FUTURE_S`` ahead of this monitor's clock; or a status no gateway writes). A time far
    ahead would move the time windows' watermark there for good: every record after it would
    be late, dropped."""
    fields, count = message.fields, message.count
    if not count:
        return {}, {}
    roles, statuses = fields["role"], fields["status"]
    models, versions = fields["model"], fields["version"]
    rows, times = fields["rows"], fields["time"]
    latest = wall_clock() + MAX_FUTURE_S
    if (
        roles.count("primary") == count
        and statuses.count("ok") == count
        and models.count(models[0]) == count
        and versions.count(versions[0]) == count
        and type(models[0]) is str
        and type(versions[0]) is str
        and set(map(type, rows)) == {int}
        and min(rows) >= 0
        and max(rows) <= MAX_RECORD_ROWS
        and set(map(type, times)) <= {float, int}
        and min(times) >= 0
        and max(times) <= latest
    ):
        key = (models[0], versions[0])  # the common case: one model version, all served
        return {key: Part(message, None, np.full(count, offset, dtype=np.int64))}, {}
    groups: dict[tuple[str, str], list[int]] = {}
    others: dict[str, int] = {}
    each = zip(roles, statuses, models, versions, rows, times, strict=True)
    for i, (role, status, model, version, n, time) in enumerate(each):
        if role == "primary" and status == "ok":
            if not well_formed(model, version, n, time, latest):
                others["malformed"] = others.get("malformed", 0) + 1
                continue
            groups.setdefault((model, version), []).append(i)
        else:
            reason = "shadow" if role != "primary" else str(status)
            if reason not in _REASONS:  # a status no gateway writes: no label of its own
                reason = "malformed"
            others[reason] = others.get(reason, 0) + 1
    parts = {
        key: Part(message, np.asarray(indices), np.full(len(indices), offset, dtype=np.int64))
        for key, indices in groups.items()
    }
    return parts, others


def well_formed(model: object, version: object, rows: object, time: object, latest: float) -> bool:
    """Whether a served record's fields are what the windows take: text, a row count, and a
    time that is a number from 0 (the epoch) to ``latest`` (the checker's clock plus
    ``MAX_FUTURE_S``). A time far before the epoch makes a pane key that floats cannot tell
    from its neighbours'."""
    return (
        type(model) is str
        and type(version) is str
        and type(rows) is int
        and 0 <= rows <= MAX_RECORD_ROWS
        and type(time) in (float, int)
        and 0 <= time <= latest  # type: ignore[operator]
    )


@dataclass(frozen=True, slots=True)
class Column:
    """One feature's values for a run of records: record ``i`` has
    ``values[starts[i]:starts[i + 1]]`` (float64 when numeric, objects when categorical), then,
    when it lacks the feature, ``absent[i]`` missing values, kept as that count and never made
    into values: a record may claim ``MAX_RECORD_ROWS`` rows in a few bytes of log."""

    values: np.ndarray
    starts: np.ndarray  # int64, one more than there are records
    absent: np.ndarray | None = None  # int64 per record; None: no record lacks the feature

    def missing_absent(self) -> int:
        """How many missing values the records that lack the feature stand for."""
        return 0 if self.absent is None else int(self.absent.sum())

    def slice(self, start: int, stop: int) -> Column:
        first = self.starts[start]
        absent = None if self.absent is None else self.absent[start:stop]
        starts = self.starts[start : stop + 1] - first
        return Column(self.values[first : self.starts[stop]], starts, absent)

    def take(self, records: np.ndarray) -> Column:
        lengths = np.diff(self.starts)[records]
        absent = None if self.absent is None else self.absent[records]
        return Column(self.values[_ranges(self.starts[records], lengths)], _starts(lengths), absent)

    def cut(self, start: int, skip: int, end: int, keep: int, rows: np.ndarray) -> Column:
        """Records ``start`` to ``end`` less the values of record ``start``'s first ``skip``
        rows and of record ``end``'s rows past its first ``keep`` (``rows``: the records' rows).
        A record with a value per row is cut at those rows; one with another number of values,
        in proportion to its rows, counted from its start."""
        first_of, end_of = int(rows[start]), int(rows[end])
        head, tail = int(self.starts[start]), int(self.starts[end])
        first = head + _share(int(self.starts[start + 1]) - head, skip, first_of)
        stop = tail + _share(int(self.starts[end + 1]) - tail, keep, end_of)
        starts = self.starts[start : end + 2].copy()
        starts[-1], starts[0] = stop, first
        absent = None
        if self.absent is not None:
            absent = self.absent[start : end + 1].copy()
            absent[-1] = _share(int(absent[-1]), keep, end_of)
            absent[0] -= _share(int(self.absent[start]), skip, first_of)
        return Column(self.values[first:stop], starts - first, absent)


def _share(length: int, rows: int, of: int) -> int:
    """How many of a record's ``length`` values its first ``rows`` rows (of ``of``) hold."""
    return length if rows == of else length * rows // of


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Records of one model version, in order, with a ``Column`` per profiled feature (the
    predictions as ``prediction:<output>``)."""

    rows: np.ndarray  # int64 per record
    times: np.ndarray  # float64 per record: event time
    offsets: np.ndarray  # int64 per record: the Kafka offset of its message
    columns: dict[str, Column]

    def __len__(self) -> int:
        return len(self.rows)

    def slice(self, start: int, stop: int) -> RecordBatch:
        """Records ``start`` to ``stop - 1``."""
        return RecordBatch(
            self.rows[start:stop],
            self.times[start:stop],
            self.offsets[start:stop],
            {name: column.slice(start, stop) for name, column in self.columns.items()},
        )

    def take(self, records: np.ndarray) -> RecordBatch:
        """The records at these (ascending) indices."""
        return RecordBatch(
            self.rows[records],
            self.times[records],
            self.offsets[records],
            {name: column.take(records) for name, column in self.columns.items()},
        )

    def cut(self, start: int, skip: int, end: int, keep: int) -> RecordBatch:
        """Records ``start`` to ``end`` less record ``start``'s first ``skip`` rows and record
        ``end``'s rows past its first ``keep`` (so a count window holds exactly its size); a
        record cut keeps its time and offset. Costs the records it holds, whatever their rows."""
        rows = self.rows[start : end + 1].copy()
        rows[-1] = keep
        rows[0] -= skip
        return RecordBatch(
            rows,
            self.times[start : end + 1],
            self.offsets[start : end + 1],
            {
                name: column.cut(start, skip, end, keep, self.rows)
                for name, column in self.columns.items()
            },
        )

    @classmethod
    def from_records(
        cls, profile: ModelProfile, records: Sequence[Mapping[str, Any]], offsets: Iterable[int]
    ) -> RecordBatch:
        """From decoded records (dicts), each with its offset."""
        offsets = np.fromiter(offsets, dtype=np.int64, count=len(records))
        return cls.from_parts(profile, [Part(columns_of(records), None, offsets)])

    @classmethod
    def from_parts(cls, profile: ModelProfile, parts: Sequence[Part]) -> RecordBatch:
        """From the records of messages' columns, in order."""
        row_chunks = [_field(p, "rows") for p in parts]
        rows = _join(row_chunks, _integers)
        times = _join([_field(p, "time") for p in parts], _floats)
        offsets = np.concatenate([p.offsets for p in parts]) if parts else np.zeros(0, np.int64)
        whole = {
            "features": [_whole(p, p.message.features) for p in parts],
            "outputs": [_whole(p, p.message.outputs) for p in parts],
        }
        # Starts by the identity of the lengths' chunks (kept alive here): the columns of a
        # block share its lengths, usually the records' rows.
        starts: dict[tuple[int, ...], tuple[list[Values], np.ndarray]] = {
            tuple(map(id, row_chunks)): (row_chunks, _starts(rows))
        }
        columns = {}
        for name, ref in profile.features.items():
            output = name.removeprefix(_PREDICTION) if name.startswith(_PREDICTION) else None
            key = name if output is None else output
            convert = _floats if ref.kind == "numeric" else _objects
            # a record without a feature has a missing value per row (not so outputs)
            pad = output is None
            chunks: list[Values] = []
            lengths: list[Values] = []
            absent: list[np.ndarray | None] = []
            for part, block in zip(parts, whole["outputs" if output else "features"], strict=True):
                column = None if block is None else block.columns.get(key)
                if type(column) is list:  # the common case: the column as it was read
                    chunks.append(column)
                    lengths.append(part.message.block_lengths(block))  # type: ignore[arg-type]
                    absent.append(None)
                    continue
                blocks = part.message.features if output is None else part.message.outputs
                values, counts, lacking = _values(part, blocks, key, convert, pad)
                chunks.append(values)
                lengths.append(counts)
                absent.append(lacking)
            ident = tuple(map(id, lengths))
            if ident not in starts:
                starts[ident] = (lengths, _starts(_join(lengths, _integers)))
            column = Column(_join(chunks, convert), starts[ident][1], _absent(parts, absent))
            columns[name] = column
        return cls(rows, times, offsets, columns)


def _whole(part: Part, blocks: list[Block]) -> Block | None:
    """The block that holds every record of the part, when one does (and it has several)."""
    if part.records is None and len(blocks) == 1 and blocks[0].records is None:
        return blocks[0] if part.message.count > 1 else None
    return None


def _field(part: Part, name: str) -> Values:
    values = part.message.fields[name]
    # a list still (not np.asarray: a malformed record's text beside them would make it text)
    return values if part.records is None else [values[i] for i in part.records.tolist()]


def _values(
    part: Part, blocks: list[Block], name: str, convert: Convert, pad: bool
) -> tuple[Values, Values, np.ndarray | None]:
    """(values of every row, values per record, rows per record that lack the column: missing
    values when ``pad``, else None) of one column of a part's records."""
    message = part.message
    if part.records is None and len(blocks) == 1 and blocks[0].records is None:
        block = blocks[0]
        if name in block.columns:  # the common case: the column as it was read
            values = block.columns[name]
            if type(values) is not list:  # numpy, before encoding
                values = convert(_listed(values))
            if message.count == 1:
                values = _listed(values)
                return values, [len(values)], None
            return values, message.block_lengths(block), None
    selected = np.arange(message.count) if part.records is None else part.records
    lengths = np.zeros(len(selected), dtype=np.int64)
    # counted, never padded: one record of 16,777,216 rows would be as many values per feature
    absent = np.array(_field(part, "rows"), dtype=np.int64) if pad else None
    pieces = []
    for block in blocks:
        if name not in block.columns:
            continue
        members = np.arange(message.count) if block.records is None else np.asarray(block.records)
        mine = np.isin(selected, members)
        if not mine.any():
            continue
        values = convert(_listed(block.columns[name]))
        if len(members) == 1:
            lengths[mine] = len(values)
        else:
            sizes = np.asarray(message.block_lengths(block), dtype=np.int64)
            where = np.searchsorted(members, selected[mine])
            lengths[mine] = sizes[where]
            values = values[_ranges(_starts(sizes)[where], sizes[where])]
        if absent is not None:
            absent[mine] = 0
        pieces.append((mine, values))
    starts = _starts(lengths)
    out = np.full(starts[-1], np.nan) if convert is _floats else np.empty(starts[-1], object)
    for mine, values in pieces:
        out[_ranges(starts[:-1][mine], lengths[mine])] = values
    return out, lengths, absent


def _absent(parts: Sequence[Part], chunks: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """One array of the parts' rows that lack a column (None where no record lacks it)."""
    if all(chunk is None or not chunk.any() for chunk in chunks):
        return None
    each = zip(parts, chunks, strict=True)
    return np.concatenate([np.zeros(len(p), np.int64) if c is None else c for p, c in each])


def _listed(values: Any) -> Values:
    if type(values) is list or (type(values) is np.ndarray and values.ndim):
        return values
    return list(values) if type(values) is tuple else [values]


def _join(chunks: Sequence[Values], convert: Convert) -> np.ndarray:
    """One array of the chunks: lists are converted together, in one call."""
    if set(map(type, chunks)) == {list}:
        if convert is _floats:  # the hot path: numbers straight from the parsed JSON
            try:
                count = sum(map(len, chunks))
                return np.fromiter(chain.from_iterable(chunks), dtype=np.float64, count=count)
            except (TypeError, ValueError):  # None, text, lists: see _floats
                pass
        return convert(list(chain.from_iterable(chunks)))
    arrays = [c if type(c) is np.ndarray else convert(c) for c in chunks]
    return np.concatenate(arrays) if arrays else convert([])


def _floats(values: Values) -> np.ndarray:
    """Floats, None as NaN; text that reads as a number is taken as one; anything else that is
    not a number (the empty string, other text, an object, a list) is NaN, missing."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        try:
            array = np.asarray(values, dtype=object).astype(np.float64)
        except (TypeError, ValueError):
            array = np.zeros(0)  # a value float() refuses: one by one below
    if array.ndim == 1 and len(array) == len(values):
        return array
    # rows that are lists of one length read as a matrix: each is a value that is not a number
    return np.fromiter(map(_float, values), dtype=np.float64, count=len(values))


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _objects(values: Values) -> np.ndarray:
    return np.fromiter(values, dtype=object, count=len(values))


def _integers(values: Values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _starts(lengths: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return starts


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices of runs ``starts[k] .. starts[k] + lengths[k] - 1``, one after another."""
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    runs: np.ndarray = np.arange(total) + np.repeat(starts - (ends - lengths), lengths)
    return runs
