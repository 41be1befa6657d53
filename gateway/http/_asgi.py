"""Small ASGI helpers for the hot path: read a bounded body, send a whole response."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidInputError, NotReadyError, PayloadTooLargeError

__all__ = [
    "Receive",
    "Scope",
    "Send",
    "error_status",
    "header",
    "read_body",
    "send_error",
    "send_response",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

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


def header(scope: Scope, name: bytes) -> bytes | None:
    """One request header's value (``name`` in lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole request body, refusing more than ``limit`` bytes; undo gzip/deflate."""
    declared = header(scope, b"content-length")
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
    encoding = header(scope, b"content-encoding")
    if encoding is None or encoding == b"identity":
        return body
    if encoding not in (b"gzip", b"deflate"):
        raise InvalidInputError(f"unsupported Content-Encoding {encoding.decode('latin-1')!r}")
    return _inflate(body, encoding, limit)


def _inflate(body: bytes, encoding: bytes, limit: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == b"gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInputError(f"body is not valid {encoding.decode()} data: {exc}") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLargeError(f"decompressed request body exceeds {limit} bytes")
    return data


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a complete response in two messages."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: GatewayError, request_id: str | None = None) -> None:
    """Render a domain error as ``{"error": ...}`` with its status (and Retry-After)."""
    extra = []
    if request_id is not None:
        extra.append((b"x-request-id", request_id.encode()))
    if isinstance(exc, NotReadyError):
        extra.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
    await send_response(
        send, error_status(exc), orjson.dumps({"error": str(exc)}), extra_headers=extra
    )
