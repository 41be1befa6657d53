"""What a parse process runs (``gateway.http``'s parse pool): its start, and one request's parse.

A spawned process imports the module of every function it is sent. So what it runs lives
here, outside ``gateway.http``, whose import brings Starlette, the feature log's Kafka client,
traffic and the rest of the server: a parse process imports this module and the wire formats
(``gateway.protocol``, and with it ``gateway.serving`` for the model signatures: numpy, orjson,
pydantic), not the server, nor onnxruntime (``gateway.serving`` imports it when a model is
loaded). tests/gateway/http/test_parse_pool.py checks what a parse process has imported.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable
from typing import TypeVar

from gateway.protocol import decode_body

__all__ = ["parse_in_process", "pid", "start"]

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


def start(parent: int) -> None:
    """A parse process's first act: end when the gateway ends (Linux sends the signal even
    when the gateway is SIGKILLed), and leave Ctrl-C (SIGINT to the whole group) to the
    gateway, which stops its processes itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the gateway ended before the call above took effect
        os._exit(1)


def pid() -> int:
    """The process's id (the pool's first call to each process)."""
    return os.getpid()


def parse_in_process(
    body: bytes | list[bytes],
    encodings: list[tuple[bytes, bytes]],
    limit: int,
    parse: Callable[[bytes], T],
) -> T:
    """Join the body, undo its Content-Encoding (``encodings``: those header pairs; at most
    ``limit`` bytes) and ``parse`` it: what a parse process runs for one request. ``parse``
    must be picklable (a module-level function, or a ``functools.partial`` of one), and its
    module light to import (see above)."""
    whole = body if isinstance(body, bytes) else b"".join(body)
    return parse(decode_body(whole, encodings, limit))
