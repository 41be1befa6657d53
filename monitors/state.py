"""Snapshots of one partition's monitor state, written atomically beside its committed offset.

The service processes a batch of a partition, writes the partition's snapshot (window panes,
decision state, how far windows were evaluated, and the offset after the batch), and only then
commits that offset. The file keeps the snapshot before it too. On assignment the snapshot whose
offset equals the group's committed offset is the state that offset stands for:

- the current one after a clean stop or a crash after the commit;
- the previous one after a crash between writing and committing (the batch is read again and
  rebuilt exactly; windows it closed are not evaluated twice, because the evaluation marks,
  decisions and undelivered webhook events of the current snapshot are kept);
- none when the file was written by an instance that lost the partition since, or by none:
  the partition starts from its committed offset with empty windows (the partial windows of
  the previous owner are lost, counted in ``monitor_state_restores_total{outcome="missing"}``;
  nothing is counted twice). A state directory shared by every instance avoids that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["PartitionSnapshot", "SnapshotStore"]


@dataclass
class PartitionSnapshot:
    """One partition's state as of ``offset`` (the next offset to read)."""

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


class SnapshotStore:
    """``<dir>/<topic>-<partition>.json`` per partition: the current and the previous snapshot."""

    def __init__(self, directory: Path, topic: str) -> None:
        self._directory = Path(directory)
        self._topic = topic
        self._last: dict[int, PartitionSnapshot] = {}

    def _path(self, partition: int) -> Path:
        return self._directory / f"{self._topic}-{partition}.json"

    def save(self, partition: int, snapshot: PartitionSnapshot) -> None:
        """Write atomically (temporary file, fsync, rename); the last save becomes previous."""
        self._directory.mkdir(parents=True, exist_ok=True)
        previous = self._last.get(partition)
        doc = {
            "current": snapshot.to_dict(),
            "previous": previous.to_dict() if previous is not None else None,
        }
        path = self._path(partition)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as fh:
            fh.write(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self._last[partition] = snapshot

    def load(self, partition: int, committed: int | None) -> PartitionSnapshot | None:
        """The snapshot that goes with the committed offset, or None (see the module doc)."""
        self._last.pop(partition, None)
        path = self._path(partition)
        if committed is None or not path.is_file():
            return None
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        current = PartitionSnapshot.from_dict(doc["current"])
        if current.offset == committed:
            self._last[partition] = current
            return current
        if doc.get("previous") is not None:
            previous = PartitionSnapshot.from_dict(doc["previous"])
            if previous.offset == committed:
                # Crashed before the commit: the previous windows, re-read from its offset,
                # rebuild the current ones; the evaluation marks stay the current ones.
                previous.evaluated = current.evaluated
                previous.decisions = current.decisions
                previous.pending = current.pending
                self._last[partition] = previous
                return previous
        return None

    def forget(self, partition: int) -> None:
        """Stop rotating a partition this instance no longer owns."""
        self._last.pop(partition, None)
