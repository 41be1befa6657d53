"""A parse that kills its process, for the parse pool's tests. A parse process imports this
module, so it stays as light as ``gateway._parse_process``."""

from __future__ import annotations

import gc
import os
import signal
import struct
from collections.abc import Callable
from multiprocessing.queues import SimpleQueue
from typing import TypeVar

from gateway._parse_process import parse_in_process

T = TypeVar("T")

KILLER_ID = "kill-the-parser"  # the request id of a body that kills its parse process


def parse_or_die(
    body: bytes | list[bytes],
    encodings: list[tuple[bytes, bytes]],
    limit: int,
    parse: Callable[[bytes], T],
) -> T:
    """``parse_in_process``, but a body with the request id ``KILLER_ID`` kills the process (SIGKILL, as the
    kernel's OOM killer would) every time it is parsed."""
    whole = body if isinstance(body, bytes) else b"".join(body)
    if b'"id":"%s"' % KILLER_ID.encode() in whole:
        os.kill(os.getpid(), signal.SIGKILL)
    return parse_in_process(whole, encodings, limit, parse)


def answer_half_then_die(flag: str) -> int:
    """The first call (``flag``, a file path, not there yet) starts writing its answer to the
    gateway, then the process is killed before the rest (as one killed while sending a large
    body's arrays would be); later calls answer the process's id."""
    if os.path.exists(flag):
        return os.getpid()
    open(flag, "x").close()
    (answers,) = [o for o in gc.get_objects() if isinstance(o, SimpleQueue)]
    writer = answers._writer  # type: ignore[attr-defined]
    os.write(writer.fileno(), struct.pack("!i", 1 << 20) + b"half an answer")
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")
