"""Schema version 2: the records of one Kafka message as columns (see ``monitors.schema``).

``columns_of`` turns records into ``MessageColumns`` (the encoder's first step, and how version
1 records reach the monitor's columnar path); ``to_json``/``from_json`` write and read them;
``to_records`` gives the records back, exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, pairwise
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

__all__ = [
    "Block",
    "FeatureMatrix",
    "IrregularRecordsError",
    "MessageColumns",
    "columns_of",
    "from_json",
    "to_json",
    "to_records",
]

VERSION = 2
_MESSAGE_KEYS = frozenset(("schema_version", "features", "outputs"))  # not per-record fields
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_ABSENT = object()
_ARRAYS = frozenset((list, tuple, np.ndarray))


class IrregularRecordsError(ValueError):
    """Records the columns cannot hold exactly: their features or outputs are not objects."""


class FeatureMatrix(Mapping[str, np.ndarray]):
    """A request's named features as one ``(rows, features)`` matrix, kept so until encoded.

    The gateway logs a tabular model's input like this: the encoder stacks the matrices of a
    message's records and writes every column with one numpy call. Reads as ``{name: column}``.
    ``names`` is kept, not copied (the records of one model share their model's list).
    """

    __slots__ = ("matrix", "names")

    def __init__(self, names: Sequence[str], matrix: np.ndarray) -> None:
        if matrix.ndim != 2 or matrix.shape[1] != len(names):
            raise ValueError(f"{len(names)} feature columns expected, got shape {matrix.shape}")
        self.names = names
        self.matrix = matrix

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            j = self.names.index(name)
        except ValueError:
            raise KeyError(name) from None
        return np.ascontiguousarray(self.matrix[:, j])

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


@dataclass(slots=True)
class Block:
    """Feature (or output) columns of the records of a message that have the same names.

    ``columns[name]`` holds the values of every row of the block's records in order: record
    ``records[k]`` has ``lengths[k]`` of them (its ``rows`` when ``lengths`` is None). A block of
    one record holds that record's values as they are, whatever their lengths.
    """

    records: list[int] | None  # ascending indices into the message; None: all its records
    lengths: list[int] | None
    columns: dict[str, Any]


@dataclass(slots=True)
class MessageColumns:
    """The records of one Kafka message as columns."""

    version: int  # the schema version of the message they were read from
    count: int
    fields: dict[str, list[Any]]  # the fields every record has (but features, outputs): values
    sparse: dict[str, dict[int, Any]]  # the fields some records lack: record index -> value
    features: list[Block]
    outputs: list[Block]

    def block_lengths(self, block: Block) -> list[int]:
        """Values per record of a block of several records."""
        if block.lengths is not None:
            return block.lengths
        rows = self.fields["rows"]
        return rows if block.records is None else [rows[i] for i in block.records]


# -- records to columns ---------------------------------------------------------------------


def columns_of(
    records: Sequence[Mapping[str, Any]], *, version: int = VERSION, for_json: bool = False
) -> MessageColumns:
    """Records as columns; raises IrregularRecordsError when their features or outputs are
    not objects. ``for_json`` keeps numpy arrays and writes mixed columns as JSON fragments."""
    fields, sparse = _fields(records)
    rows = fields.get("rows")
    return MessageColumns(
        version,
        len(records),
        fields,
        sparse,
        _blocks(records, "features", rows, for_json),
        _blocks(records, "outputs", rows, for_json),
    )


def _fields(
    records: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, list[Any]], dict[str, dict[int, Any]]]:
    if not records:
        return {}, {}
    if len(set(map(len, records))) == 1:
        try:  # the common case: as many keys in each record as in the first, and all of those
            fields = {k: list(map(itemgetter(k), records)) for k in records[0]}
            for k in _MESSAGE_KEYS & fields.keys():
                del fields[k]
            return fields, {}
        except KeyError:
            pass
    fields = {}
    sparse: dict[str, dict[int, Any]] = {}
    for k in dict.fromkeys(chain.from_iterable(records)):
        if k in _MESSAGE_KEYS:
            continue
        values = {i: r[k] for i, r in enumerate(records) if k in r}
        if len(values) == len(records):
            fields[k] = list(values.values())
        else:
            sparse[k] = values
    return fields, sparse


def _blocks(
    records: Sequence[Mapping[str, Any]], key: str, rows: list[Any] | None, for_json: bool
) -> list[Block]:
    values = [record.get(key, _ABSENT) for record in records]
    kinds = set(map(type, values))
    names: set[tuple[str, ...]] = set()
    if kinds == {FeatureMatrix}:  # names shared by the matrices of one model's records
        first = values[0].names
        if all(v.names is first or v.names == first for v in values):
            names = {tuple(first)}
    elif kinds == {dict}:
        names = set(map(tuple, values))
    if len(names) == 1:  # the common case: every record has the same names
        groups = {names.pop(): list(range(len(records)))}
    else:
        groups = {}
        for i, value in enumerate(values):
            if value is _ABSENT:
                continue
            if isinstance(value, Mapping):
                groups.setdefault(tuple(value), []).append(i)
            else:
                raise IrregularRecordsError(f"{key} of record {i} is not an object")
    blocks: list[Block] = []
    for group, indices in groups.items():
        blocks += _group(records, key, group, indices, for_json)
    for block in blocks:
        if block.records is not None and len(block.records) == len(records):
            block.records = None
        if block.lengths is not None and rows is not None:  # written only where they differ
            own = rows if block.records is None else [rows[i] for i in block.records]
            if own == block.lengths and set(map(type, own)) == {int}:
                block.lengths = None
    return blocks


def _group(
    records: Sequence[Mapping[str, Any]],
    key: str,
    names: tuple[str, ...],
    indices: list[int],
    for_json: bool,
) -> list[Block]:
    """The blocks of records with the same names: one, plus one per irregular record."""
    values = [records[i][key] for i in indices]
    if len(indices) == 1:
        return [Block(indices, None, {name: values[0][name] for name in names})]
    if all(type(v) is FeatureMatrix for v in values) and len({v.matrix.dtype for v in values}) == 1:
        matrix = np.concatenate([v.matrix for v in values])  # the fast path: one numpy call
        columns = dict(zip(names, np.ascontiguousarray(matrix.T), strict=True))
        return [Block(indices, [len(v.matrix) for v in values], columns)]
    parts = {name: list(map(itemgetter(name), values)) for name in names}
    types = {name: set(map(type, column)) for name, column in parts.items()}
    lengths = [_lengths(column, types[name]) for name, column in parts.items()]
    common = lengths[0] if lengths else [0] * len(indices)
    odd: set[int] = set()
    if min(common, default=0) < 0 or any(other != common for other in lengths[1:]):
        odd = {k for k, n in enumerate(common) if n < 0 or any(o[k] != n for o in lengths[1:])}
    if odd:  # a record whose columns differ in length gets a block of its own
        rest = [i for k, i in enumerate(indices) if k not in odd]
        singles = [_group(records, key, names, [indices[k]], for_json)[0] for k in sorted(odd)]
        return singles + (_group(records, key, names, rest, for_json) if rest else [])
    columns = {name: _join(column, types[name], for_json) for name, column in parts.items()}
    return [Block(indices, common, columns)]


def _lengths(column: list[Any], types: set[type]) -> list[int]:
    """Rows of each record's column (of these types); -1 for one that is not an array."""
    if types <= _ARRAYS:
        try:
            return list(map(len, column))
        except TypeError:  # an array of no dimensions
            pass
    return list(map(_length, column))


def _length(value: object) -> int:
    """Rows of one record's column; -1 when it is not an array."""
    if type(value) is list or type(value) is tuple:
        return len(value)
    if type(value) is np.ndarray and value.ndim:
        return len(value)
    return -1


def _join(parts: list[Any], types: set[type], for_json: bool) -> Any:
    """One column from the records' columns, each value written as it would be on its own."""
    if types == {np.ndarray} and len({p.dtype for p in parts}) == 1:
        try:
            return np.concatenate(parts)
        except ValueError:  # the rows have different shapes
            pass
    elif types <= {list, tuple}:
        return list(chain.from_iterable(parts))
    if for_json:
        pieces = (orjson.dumps(p, option=_NUMPY)[1:-1] for p in parts)
        return orjson.Fragment(b"[" + b",".join(p for p in pieces if p) + b"]")
    return list(chain.from_iterable(p.tolist() if type(p) is np.ndarray else p for p in parts))


# -- JSON -----------------------------------------------------------------------------------


def to_json(columns: MessageColumns) -> bytes:
    """The message: its version and record count first, so they can be read without parsing."""
    doc = {
        "schema_version": VERSION,
        "records": columns.count,
        "fields": columns.fields,
        "sparse": {
            k: {str(i): v for i, v in values.items()} for k, values in columns.sparse.items()
        },
        "features": [_block_doc(b) for b in columns.features],
        "outputs": [_block_doc(b) for b in columns.outputs],
    }
    return orjson.dumps(doc, option=_NUMPY)


def _block_doc(block: Block) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if block.records is not None:
        doc["records"] = block.records
    if block.lengths is not None:
        doc["lengths"] = block.lengths
    doc["columns"] = block.columns
    return doc


def from_json(doc: Any, required: frozenset[str]) -> MessageColumns:
    """Check a parsed version 2 message; raises ValueError naming what is wrong."""
    if type(doc) is not dict:
        raise ValueError("message is not a JSON object")
    count = doc.get("records")
    if type(count) is not int or count < 0:
        raise ValueError("records is not a count")
    fields = doc.get("fields")
    if type(fields) is not dict:
        raise ValueError("fields is not an object")
    for name, column in fields.items():
        if type(column) is not list or len(column) != count:
            raise ValueError(f"field {name!r} does not hold {count} values")
    sparse: dict[str, dict[int, Any]] = {}
    given = doc.get("sparse", {})
    if type(given) is not dict or any(type(values) is not dict for values in given.values()):
        raise ValueError("sparse is not an object of objects")
    for name, values in given.items():
        sparse[name] = {int(i): value for i, value in values.items()}
        if not _indices(list(sparse[name]), count) or name in fields:
            raise ValueError(f"sparse field {name!r} does not map records to values")
    lacking = required - fields.keys()
    if lacking and count:
        raise ValueError(f"records lack {sorted(lacking)}")
    columns = MessageColumns(VERSION, count, fields, sparse, [], [])
    columns.features = _blocks_from(doc.get("features", []), columns, "features")
    columns.outputs = _blocks_from(doc.get("outputs", []), columns, "outputs")
    return columns


def _blocks_from(docs: Any, message: MessageColumns, key: str) -> list[Block]:
    if type(docs) is not list:
        raise ValueError(f"{key} is not a list of blocks")
    blocks = []
    for doc in docs:
        if type(doc) is not dict or type(doc.get("columns")) is not dict:
            raise ValueError(f"a block of {key} has no columns")
        records, lengths = doc.get("records"), doc.get("lengths")
        if records is not None and not (records and _indices(records, message.count, True)):
            raise ValueError(f"a block of {key} does not list records")
        block = Block(records, lengths, doc["columns"])
        size = message.count if records is None else len(records)
        if size > 1:
            if lengths is not None and not (
                type(lengths) is list and len(lengths) == size and set(map(type, lengths)) <= {int}
            ):
                raise ValueError(f"a block of {key} has lengths that do not fit its records")
            own = message.block_lengths(block)
            if not set(map(type, own)) <= {int} or min(own) < 0:
                raise ValueError(f"a block of {key} has records without a row count")
            total = sum(own)
            for name, column in block.columns.items():
                if type(column) is not list or len(column) != total:
                    raise ValueError(f"{key} column {name!r} does not hold {total} values")
        blocks.append(block)
    if len(blocks) > 1:
        members = [range(message.count) if b.records is None else b.records for b in blocks]
        every = list(chain.from_iterable(members))
        if len(set(every)) != len(every):
            raise ValueError(f"a record is in two blocks of {key}")
    return blocks


def _indices(values: Any, count: int, ascending: bool = False) -> bool:
    if type(values) is not list or not set(map(type, values)) <= {int}:
        return False
    if values and (min(values) < 0 or max(values) >= count):
        return False
    return not ascending or all(a < b for a, b in pairwise(values))


# -- columns to records ---------------------------------------------------------------------


def to_records(columns: MessageColumns) -> list[dict[str, Any]]:
    """The records, each a dict as version 1 would have decoded it."""
    keys = ("schema_version", *columns.fields)
    version = columns.version
    if columns.fields:
        rows = zip(*columns.fields.values(), strict=True)
        docs = [dict(zip(keys, (version, *values), strict=True)) for values in rows]
    else:
        docs = [{"schema_version": version} for _ in range(columns.count)]
    for name, values in columns.sparse.items():
        for i, value in values.items():
            docs[i][name] = value
    for key, blocks in (("features", columns.features), ("outputs", columns.outputs)):
        for block in blocks:
            indices = range(columns.count) if block.records is None else block.records
            if len(indices) == 1:
                docs[indices[0]][key] = dict(block.columns)
                continue
            bounds = list(accumulate(columns.block_lengths(block), initial=0))
            items = list(block.columns.items())
            for i, start, end in zip(indices, bounds, bounds[1:], strict=False):
                docs[i][key] = {name: column[start:end] for name, column in items}
    return docs
