"""A parse that kills its process, for the parse pool's tests. A parse process imports this
module, so it stays as light as ``gateway._parse_process``."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
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
