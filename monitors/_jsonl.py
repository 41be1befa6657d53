"""JSON-lines files appended to by the monitor (the window history, the audit trail), read back
whatever a crash or a bad disk left in them.

An append cut short by a crash leaves a last line without its newline: that fragment is cut off
before the next append (which would otherwise glue its first line onto it), and any line that
is not a JSON object with the fields a reader needs is skipped with a warning instead of
failing every read, and with it the consumer and ``GET /windows``, for good.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson

__all__ = ["read_entries", "repair_tail"]

log = logging.getLogger(__name__)


def read_entries(path: Path, required: dict[str, type]) -> list[dict[str, Any]]:
    """The file's lines that are JSON objects holding ``required`` (name: type), in order."""
    if not path.is_file():
        return []
    entries, skipped = [], 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(entry, dict) and all(
            isinstance(entry.get(k), t) and not isinstance(entry.get(k), bool)
            for k, t in required.items()
        ):
            entries.append(entry)
        else:
            skipped += 1
    if skipped:
        log.warning("%s: %d unreadable lines skipped", path, skipped)
    return entries


def repair_tail(path: Path) -> None:
    """Cut off a last line that has no newline (an append a crash cut short)."""
    try:
        with path.open("rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            # the start of the torn line: after the last newline, read back in blocks
            end = size
            while end > 0:
                start = max(0, end - 65536)
                fh.seek(start)
                block = fh.read(end - start)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
            log.warning("%s: a torn last line (%d bytes) cut off", path, size - end)
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
    except FileNotFoundError:
        return
