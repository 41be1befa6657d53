"""A partition snapshot as changelog records: JSON, zlib-compressed, split into chunks when the
compressed snapshot does not fit one message of the cluster's size limit.

A snapshot that fits is one record, key ``"<partition>"``, its value the compressed snapshot. One
that does not is written as chunk records (keys ``"<partition>/<write id>/<i>"``) followed by the
partition's record with an empty value whose headers name the chunks; the partition's record
comes last, so a reader that sees it has every chunk before it. The chunks of a superseded
chunked snapshot are deleted with tombstones once the next snapshot is acknowledged. Every record
is checked against the limit the way the producer measures it (a record batch of one record).
"""

from __future__ import annotations

import secrets
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from monitors.state import PartitionSnapshot

__all__ = [
    "CODEC",
    "ChangelogRecord",
    "EncodedSnapshot",
    "SnapshotCodecError",
    "assemble",
    "chunk_keys",
    "decode",
    "encode",
    "partition_key",
]

CODEC = b"zlib-json-1"
# Headroom for the varint lengths of a value that grows past the size measured empty.
_VARINT_SLACK = 16


class SnapshotCodecError(ValueError):
    """A changelog record that is not a snapshot this monitor can read, or a limit too small."""


@dataclass(frozen=True)
class ChangelogRecord:
    """One record of the changelog topic (``value`` None: a tombstone)."""

    key: bytes
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def size(self) -> int:
        """Bytes of the record batch the producer sends for this record alone."""
        return int(
            DefaultRecordBatchBuilder.estimate_size_in_bytes(
                self.key, self.value, list(self.headers)
            )
        )


@dataclass
class EncodedSnapshot:
    """A snapshot's records, in the order they must be written (the partition's record last)."""

    records: list[ChangelogRecord]
    raw_bytes: int  # the JSON before compression
    chunks: list[bytes] = field(default_factory=list)  # keys of the chunk records

    @property
    def bytes(self) -> int:
        return sum(len(r.value or b"") for r in self.records)


def partition_key(partition: int) -> bytes:
    return str(partition).encode()


def chunk_keys(record: ChangelogRecord) -> list[bytes]:
    """The keys of the chunks a partition's record names (none for a one-record snapshot)."""
    count = int(record.header("chunks") or b"0")
    prefix = record.header("chunk-prefix") or b""
    return [prefix + b"/" + str(i).encode() for i in range(count)]


def encode(partition: int, snapshot: PartitionSnapshot, max_message_bytes: int) -> EncodedSnapshot:
    """The snapshot's records, none of them over ``max_message_bytes`` as the producer counts."""
    raw = orjson.dumps(snapshot.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)
    packed = zlib.compress(raw, 6)
    key = partition_key(partition)
    headers: tuple[tuple[str, bytes], ...] = (
        ("codec", CODEC),
        ("offset", str(snapshot.offset).encode()),
    )
    whole = ChangelogRecord(key, packed, headers)
    if whole.size() <= max_message_bytes:
        return EncodedSnapshot([whole], len(raw))
    prefix = key + b"/" + secrets.token_hex(8).encode()
    probe = ChangelogRecord(prefix + b"/999999", b"", (("chunk-of", prefix),))
    room = max_message_bytes - probe.size() - _VARINT_SLACK
    if room < 1024:
        raise SnapshotCodecError(
            f"kafka.changelog.max_message_bytes {max_message_bytes} leaves no room for a chunk"
        )
    records = [
        ChangelogRecord(
            prefix + b"/" + str(i).encode(), packed[start : start + room], (("chunk-of", prefix),)
        )
        for i, start in enumerate(range(0, len(packed), room))
    ]
    head = ChangelogRecord(
        key,
        b"",
        (*headers, ("chunks", str(len(records)).encode()), ("chunk-prefix", prefix)),
    )
    records.append(head)
    for record in records:
        if record.size() > max_message_bytes:  # the slack above is meant to make this impossible
            raise SnapshotCodecError(f"a chunk of {record.size()} bytes is over the limit")
    return EncodedSnapshot(records, len(raw), [r.key for r in records[:-1]])


def assemble(head: ChangelogRecord, chunks: dict[bytes, bytes]) -> bytes:
    """The compressed snapshot of a partition's record: its value, or its chunks joined."""
    if head.header("codec") != CODEC:
        raise SnapshotCodecError(f"unknown snapshot codec {head.header('codec')!r}")
    keys = chunk_keys(head)
    if not keys:
        return head.value or b""
    missing = [k.decode() for k in keys if k not in chunks]
    if missing:
        raise SnapshotCodecError(f"chunks missing from the changelog: {missing[:3]}")
    return b"".join(chunks[k] for k in keys)


def decode(packed: bytes) -> PartitionSnapshot:
    """The snapshot of an assembled value."""
    try:
        doc: Any = orjson.loads(zlib.decompress(packed))
        return PartitionSnapshot.from_dict(doc)
    except (zlib.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SnapshotCodecError(f"undecodable snapshot: {exc}") from exc
