"""Small ASGI helpers for the hot path: read a bounded body, send a whole response."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidInputError, NotReadyError, PayloadTooLargeError
from gateway.protocol import decode_body

__all__ = [
    "INLINE_INFLATE_BYTES",
    "Headers",
    "Receive",
    "Reply",
    "Scope",
    "Send",
    "decode_body_inline",
    "error_reply",
    "error_status",
    "header",
    "read_body",
    "retry_after",
    "send_reply",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class Reply:
    """A whole response: status, body, and headers (content-type included), either as pairs or
    as ``head``: header lines already rendered (``b"name: value\\r\\n"`` each) from values
    known to be safe, which the gateway's protocol writes as they are."""

    __slots__ = ("_headers", "body", "head", "status")

    def __init__(
        self, status: int, body: bytes, headers: Headers | None = None, head: bytes | None = None
    ) -> None:
        self.status = status
        self.body = body
        self._headers = headers
        self.head = head

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            lines = (self.head or b"").split(b"\r\n")
            self._headers = [
                (name, value) for name, _, value in (ln.partition(b": ") for ln in lines if ln)
            ]
        return self._headers


# The one table from domain errors to HTTP statuses; the most specific class wins.
_STATUS: list[tuple[type[GatewayError], int]] = []


def register_status(error: type[GatewayError], status: int) -> None:
    """Add a row to the error table (used by app.py at import time)."""
    _STATUS.append((error, status))


def error_status(exc: GatewayError) -> int:
    """The HTTP status of a domain error: the first matching row along the class's MRO."""
    for cls in type(exc).__mro__:
        for error, status in _STATUS:
            if cls is error:
                return status
    return 500


def header(headers: Headers, name: bytes) -> bytes | None:
    """One request header's value (``name`` in lower case)."""
    for key, value in headers:
        if key == name:
            return bytes(value)
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole request body, refusing more than ``limit`` bytes; undo gzip/deflate."""
    declared = header(scope["headers"], b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {int(declared)} bytes exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInputError("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    decoded = decode_body_inline(body, scope["headers"], limit)
    if decoded is None:
        decoded = await asyncio.to_thread(decode_body, body, scope["headers"], limit)
    return decoded


def decode_body_inline(body: bytes, headers: Headers, limit: int) -> bytes | None:
    """``decode_body`` when the body inflates to at most ``INLINE_INFLATE_BYTES``; None when it
    inflates to more (and ``limit`` allows more): inflate it on a worker thread then."""
    try:
        return decode_body(body, headers, min(limit, INLINE_INFLATE_BYTES))
    except PayloadTooLargeError:
        if limit <= INLINE_INFLATE_BYTES:
            raise
        return None


# A body that inflates to more than this is inflated on a worker thread: 16 KiB of gzip can stand
# for 16 MiB, and inflating and parsing that on the event loop held it for half a second.
INLINE_INFLATE_BYTES = 256 * 1024


async def send_reply(send: Send, reply: Reply) -> None:
    """Send a whole response in two ASGI messages."""
    headers = [(b"content-length", str(len(reply.body)).encode()), *reply.headers]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


JSON = b"application/json"


def retry_after(exc: NotReadyError) -> str:
    """``Retry-After`` in whole seconds, at least 1, rounded up: sooner is refused again."""
    return str(max(1, math.ceil(exc.retry_after_s)))


def error_reply(exc: GatewayError, request_id: str | None = None) -> Reply:
    """A domain error as ``{"error": ...}`` with its status (and Retry-After)."""
    headers = [(b"content-type", JSON)]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))
    if isinstance(exc, NotReadyError):
        headers.append((b"retry-after", retry_after(exc).encode()))
    return Reply(error_status(exc), orjson.dumps({"error": str(exc)}), headers)
