"""An append-only disk spool for log records the broker could not take (yet).

Records are framed ``[u32 key length][u32 value length][key][value]`` in segment files
``NNNNNNNN.seg``; a ``cursor`` file (replaced atomically) says how far replay has been
acknowledged. Fully acknowledged segments are deleted. The spool is bounded in bytes: an append
that would exceed the bound is refused and the caller counts the records as dropped.

All methods are blocking file I/O: call them from a worker thread.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["Spool", "SpoolEntry"]

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_CURSOR = "cursor"


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One spooled record and where the record after it starts."""

    key: bytes
    value: bytes
    segment: int
    end: int


class Spool:
    """A bounded, ordered, crash-safe record spool in one folder."""

    def __init__(
        self, directory: Path, max_bytes: int, segment_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._cursor = self._read_cursor()
        self._drop_consumed_segments()
        self._repair_tail()
        self._bytes = sum(self._segment_path(s).stat().st_size for s in self._segments())
        self._bytes -= self._cursor[1] if self._segments() else 0
        self._records = self._count_pending()

    @property
    def pending_bytes(self) -> int:
        """Bytes written but not yet acknowledged."""
        return self._bytes

    @property
    def pending_records(self) -> int:
        """Records written but not yet acknowledged."""
        return self._records

    def append(self, records: list[tuple[bytes, bytes]]) -> int:
        """Append records in order; returns how many fit under ``max_bytes`` (a prefix)."""
        with self._lock:
            segments = self._segments()
            segment = segments[-1] if segments else self._cursor[0]
            path = self._segment_path(segment)
            size = path.stat().st_size if path.exists() else 0
            written = 0
            chunks: list[bytes] = []
            for key, value in records:
                frame = _HEADER.pack(len(key), len(value)) + key + value
                if self._bytes + len(frame) > self.max_bytes:
                    break
                if size > 0 and size + len(frame) > self.segment_bytes:
                    self._write(path, chunks)
                    chunks = []
                    segment += 1
                    path = self._segment_path(segment)
                    size = 0
                chunks.append(frame)
                size += len(frame)
                self._bytes += len(frame)
                written += 1
            self._write(path, chunks)
            self._records += written
            return written

    def read(self, max_records: int, max_bytes: int = 4 * 1024 * 1024) -> list[SpoolEntry]:
        """The oldest unacknowledged records in order: ``max_records`` or about ``max_bytes``."""
        with self._lock:
            entries: list[SpoolEntry] = []
            taken = 0
            for segment, fh, pos, key_len, value_len in self._frames():
                body = fh.read(key_len + value_len)
                if len(body) < key_len + value_len:
                    break
                end = pos + _HEADER.size + len(body)
                entries.append(SpoolEntry(body[:key_len], body[key_len:], segment, end))
                taken += end - pos
                if len(entries) >= max_records or taken >= max_bytes:
                    break
            return entries

    def _frames(self) -> Iterator[tuple[int, BinaryIO, int, int, int]]:
        """(segment, open file, frame start, key length, value length) of each pending frame;
        the file is left at the frame's body, for a caller that wants to read it."""
        segment, offset = self._cursor
        for current in self._segments():
            if current < segment:
                continue
            pos = offset if current == segment else 0
            with self._segment_path(current).open("rb") as fh:
                while True:
                    fh.seek(pos)
                    header = fh.read(_HEADER.size)
                    if len(header) < _HEADER.size:
                        break
                    key_len, value_len = _HEADER.unpack(header)
                    yield current, fh, pos, key_len, value_len
                    pos += _HEADER.size + key_len + value_len

    def ack(self, entry: SpoolEntry, count: int) -> None:
        """Acknowledge records up to and including ``entry`` (``count`` records in all)."""
        with self._lock:
            old_segment, old_offset = self._cursor
            freed = 0
            for segment in self._segments():
                if segment < old_segment or segment > entry.segment:
                    continue
                start = old_offset if segment == old_segment else 0
                stop = (
                    entry.end
                    if segment == entry.segment
                    else self._segment_path(segment).stat().st_size
                )
                freed += stop - start
            self._cursor = (entry.segment, entry.end)
            self._write_cursor()
            self._bytes -= freed
            self._records -= count
            self._drop_consumed_segments()

    # -- internals ----------------------------------------------------------------------------

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob("*.seg") if p.stem.isdigit())

    def _segment_path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}.seg"

    def _write(self, path: Path, chunks: list[bytes]) -> None:
        if not chunks:
            return
        with path.open("ab") as fh:
            fh.write(b"".join(chunks))
            fh.flush()
            os.fsync(fh.fileno())

    def _read_cursor(self) -> tuple[int, int]:
        path = self.directory / _CURSOR
        try:
            segment, offset = path.read_text().split()
            return int(segment), int(offset)
        except (FileNotFoundError, ValueError):
            segments = self._segments()
            return (segments[0] if segments else 0, 0)

    def _write_cursor(self) -> None:
        tmp = self.directory / f"{_CURSOR}.tmp"
        tmp.write_text(f"{self._cursor[0]} {self._cursor[1]}")
        os.replace(tmp, self.directory / _CURSOR)

    def _drop_consumed_segments(self) -> None:
        segment, offset = self._cursor
        segments = self._segments()
        for current in segments:
            path = self._segment_path(current)
            fully_read = current == segment and offset >= path.stat().st_size
            if current < segment or (fully_read and current != segments[-1]):
                path.unlink()
        if segments and all(s <= segment for s in segments):
            last = self._segment_path(segment)
            if last.exists() and offset >= last.stat().st_size:
                # everything acknowledged: start afresh in the next segment
                last.unlink()
                self._cursor = (segment + 1, 0)
                self._write_cursor()

    def _repair_tail(self) -> None:
        """Cut a record torn by a crash off the end of the last segment."""
        segments = self._segments()
        if not segments:
            return
        path = self._segment_path(segments[-1])
        data = path.read_bytes()
        pos = self._cursor[1] if segments[-1] == self._cursor[0] else 0
        while pos + _HEADER.size <= len(data):
            key_len, value_len = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + key_len + value_len
            if end > len(data):
                break
            pos = end
        if pos < len(data):
            log.warning("spool: cutting %d torn bytes off %s", len(data) - pos, path.name)
            with path.open("r+b") as fh:
                fh.truncate(pos)

    def _count_pending(self) -> int:
        return sum(1 for _ in self._frames())
