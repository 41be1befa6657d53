"""An append-only disk spool for log records the broker could not take (yet).

Records are framed ``[u32 key length][u32 value length][key][value]`` in segment files
``NNNNNNNN.seg``; a ``cursor`` file (replaced atomically) says how far replay has been
acknowledged. Fully acknowledged segments are deleted. The spool is bounded in bytes: an append
that would exceed the bound is refused and the caller counts the records as dropped. A write
that fails (disk full, folder not writable) is cut back to the last whole record and raised as
``SpoolWriteError`` saying how many records did reach the disk; a cursor that cannot be saved
leaves the acknowledgement in memory (a restart then sends those records again). At open, a
segment whose frames run past its end (a crash tore the last record, or the file was damaged)
is cut at the first bad frame, so replay never stalls on it.

All methods are blocking file I/O: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["Spool", "SpoolEntry", "SpoolWriteError"]

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_CURSOR = "cursor"


class SpoolWriteError(OSError):
    """The disk refused a write; the first ``written`` records of the append are spooled."""

    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(cause.errno, f"spool write failed: {cause.strerror or cause}")
        self.written = written


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
        pending = self._repair()  # the pending records, counted as the segments are checked
        self._bytes = sum(self._segment_path(s).stat().st_size for s in self._segments())
        self._bytes -= self._cursor[1] if self._segments() else 0
        self._records = pending

    @property
    def pending_bytes(self) -> int:
        """Bytes written but not yet acknowledged."""
        return self._bytes

    @property
    def pending_records(self) -> int:
        """Records written but not yet acknowledged."""
        return self._records

    def append(self, records: list[tuple[bytes, bytes]]) -> int:
        """Append records in order; returns how many fit under ``max_bytes`` (a prefix).

        Raises ``SpoolWriteError`` (with how many were written) when the disk refuses them."""
        with self._lock:
            segments = self._segments()
            segment = segments[-1] if segments else self._cursor[0]
            path = self._segment_path(segment)
            size = path.stat().st_size if path.exists() else 0
            written = 0
            chunks: list[bytes] = []
            taken = 0  # bytes in ``chunks``
            try:
                for key, value in records:
                    frame = _HEADER.pack(len(key), len(value)) + key + value
                    if self._bytes + taken + len(frame) > self.max_bytes:
                        break
                    if size > 0 and size + len(frame) > self.segment_bytes:
                        self._write(path, chunks)
                        written, taken = self._written(written, chunks, taken), 0
                        chunks = []
                        segment += 1
                        path = self._segment_path(segment)
                        size = 0
                    chunks.append(frame)
                    size += len(frame)
                    taken += len(frame)
                self._write(path, chunks)
            except OSError as exc:
                raise SpoolWriteError(written, exc) from exc
            return self._written(written, chunks, taken)

    def _written(self, written: int, chunks: list[bytes], taken: int) -> int:
        self._bytes += taken
        self._records += len(chunks)
        return written + len(chunks)

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
            self._bytes -= freed
            self._records -= count
            # In memory first: the records were delivered, and a cursor that cannot be saved
            # must not make this process send them again and again.
            try:
                self._write_cursor()
                self._drop_consumed_segments()
            except OSError as exc:
                log.error("spool: cannot save the replay position in %s (%s); a restart "
                          "will send these records again", self.directory, exc)  # fmt: skip

    def adopt(self, directory: Path) -> int:
        """Move the pending records of the spool in ``directory`` (another process's, left
        behind) in order behind this one's; returns how many were moved. What does not fit
        under ``max_bytes`` stays there; a crash half way sends some records twice, never none."""
        other = Spool(directory, self.max_bytes)
        moved = 0
        while entries := other.read(1000):
            try:
                written = self.append([(e.key, e.value) for e in entries])
            except SpoolWriteError as exc:
                written = exc.written
                raise
            finally:
                if written:
                    other.ack(entries[written - 1], written)
                moved += written
            if written < len(entries):
                break
        return moved

    # -- internals ----------------------------------------------------------------------------

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob("*.seg") if p.stem.isdigit())

    def _segment_path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}.seg"

    def _write(self, path: Path, chunks: list[bytes]) -> None:
        if not chunks:
            return
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                data = memoryview(b"".join(chunks))
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except OSError:
                # no half record may stay behind: the next append would follow it
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

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

    def _repair(self) -> int:
        """Cut each pending segment at its first frame that runs past the segment's end: a
        record torn by a crash at the end of the last one, or a damaged file. Frames carry
        no checksum, so what follows a bad length cannot be found again; later segments are
        kept. Reads the frames' headers only; returns how many whole frames are pending."""
        frames = 0
        segment, offset = self._cursor
        for current in self._segments():
            if current < segment:
                continue
            path = self._segment_path(current)
            pos = offset if current == segment else 0
            with path.open("r+b") as fh:
                size = os.fstat(fh.fileno()).st_size
                while pos + _HEADER.size <= size:
                    fh.seek(pos)
                    key_len, value_len = _HEADER.unpack(fh.read(_HEADER.size))
                    end = pos + _HEADER.size + key_len + value_len
                    if end > size:
                        break
                    pos = end
                    frames += 1
                if pos < size:
                    log.warning("spool: cutting %d unreadable bytes (a torn or damaged record "
                                "and what follows it) off %s", size - pos, path.name)  # fmt: skip
                    fh.truncate(pos)
        return frames
