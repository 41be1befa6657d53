"""Messages the broker refused for good (too large, not authorised, ...), kept for an operator.

``dead-letter.jsonl`` in the spool folder: one JSON object per refused message with the time,
the reason, the key, how many records it held and the message itself (the records' JSON text),
so an operator can read it and send it again once the cause is fixed. Bounded in bytes: what
would exceed the bound is dropped and counted instead.

Blocking file I/O: call it from a worker thread.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson

__all__ = ["DeadLetterFile"]

FILE_NAME = "dead-letter.jsonl"


class DeadLetterFile:
    """An append-only, size-bounded JSON-lines file of refused messages."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.path = Path(directory) / FILE_NAME
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def append(self, key: bytes, value: bytes, records: int, reason: str) -> bool:
        """Keep one refused message; False when the file is full (the caller counts a drop)."""
        line = orjson.dumps(
            {
                "time": time.time(),
                "reason": reason,
                "key": key.decode("utf-8", "replace"),
                "records": records,
                "message": value.decode("utf-8", "replace"),
            }
        )
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            size = self.path.stat().st_size if self.path.exists() else 0
            if size + len(line) + 1 > self.max_bytes:
                return False
            with self.path.open("ab") as fh:
                fh.write(line + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        return True
