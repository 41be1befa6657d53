"""A partition's monitor state (``PartitionSnapshot``) and the local cache of it.

The service processes a batch of a partition, writes the partition's snapshot (window panes,
decision state, how far windows were evaluated, undelivered webhook events, and the offset after
the batch) to the changelog topic (``monitors/changelog.py``), and once the broker acknowledged
it, writes it to the local cache with the changelog offset it got, and only then commits the
input offset. An instance taking a partition on reads the changelog's latest record for it and
uses the cached copy only when the cache holds that very record (same changelog offset or a
later one): anything older was written before another instance owned the partition.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

__all__ = [
    "CachedSnapshot",
    "PartitionSnapshot",
    "SnapshotCache",
    "choose_source",
    "make_state_dir",
]


def make_state_dir(directory: Path) -> None:
    """Create a process's ``state_dir`` before it starts; raises OSError reading
    ``"state_dir: cannot create <directory>: <why>"`` (a file in the way, a read-only mount)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"state_dir: cannot create {directory}: {exc.strerror or exc}") from exc


@dataclass
class PartitionSnapshot:
    """One partition's state as of ``offset`` (the next input offset to read)."""

    offset: int
    windows: dict[str, Any] = field(default_factory=dict)  # "model/version" -> Windows state
    sequence: dict[str, int] = field(default_factory=dict)  # windows closed per model version
    evaluated: dict[str, int] = field(default_factory=dict)  # windows evaluated per version
    decisions: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)  # webhook events not delivered yet

    def to_dict(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "windows": self.windows,
            "sequence": self.sequence,
            "evaluated": self.evaluated,
            "decisions": self.decisions,
            "pending": self.pending,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PartitionSnapshot:
        return cls(
            offset=int(doc["offset"]),
            windows=dict(doc.get("windows", {})),
            sequence={k: int(v) for k, v in doc.get("sequence", {}).items()},
            evaluated={k: int(v) for k, v in doc.get("evaluated", {}).items()},
            decisions=dict(doc.get("decisions", {})),
            pending={str(k): str(v) for k, v in doc.get("pending", {}).items()},
        )


@dataclass
class CachedSnapshot:
    """A snapshot as the cache holds it: with the changelog offset its record was written at."""

    changelog_offset: int
    snapshot: PartitionSnapshot


def choose_source(
    changelog_offset: int | None, cache: CachedSnapshot | None
) -> Literal["cache", "changelog", "empty"]:
    """Where a partition's state comes from: ``changelog_offset`` is the offset of the
    changelog's latest record for the partition (None: no record, or a tombstone)."""
    if changelog_offset is None:
        return "empty"
    if cache is not None and cache.changelog_offset >= changelog_offset:
        return "cache"
    return "changelog"


class SnapshotCache:
    """``<dir>/<topic>-<partition>.snapshot.json`` per partition, written atomically."""

    def __init__(self, directory: Path, topic: str) -> None:
        self._directory = Path(directory)
        self._topic = topic

    def _path(self, partition: int) -> Path:
        return self._directory / f"{self._topic}-{partition}.snapshot.json"

    def save(self, partition: int, cached: CachedSnapshot) -> None:
        """Write atomically: a temporary file, fsync, rename."""
        self._directory.mkdir(parents=True, exist_ok=True)
        doc = {"changelog_offset": cached.changelog_offset, "snapshot": cached.snapshot.to_dict()}
        path = self._path(partition)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as fh:
            fh.write(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load(self, partition: int) -> CachedSnapshot | None:
        """The cached snapshot, or None when there is none or it cannot be read."""
        path = self._path(partition)
        try:
            doc = orjson.loads(path.read_bytes())
            return CachedSnapshot(
                int(doc["changelog_offset"]), PartitionSnapshot.from_dict(doc["snapshot"])
            )
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def drop(self, partition: int) -> None:
        """Remove a partition's cached snapshot (its changelog record was deleted)."""
        self._path(partition).unlink(missing_ok=True)
