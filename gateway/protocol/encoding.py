"""Request bodies' Content-Encoding: gzip and deflate undone within a size limit."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from gateway.errors import InvalidInputError, PayloadTooLargeError

__all__ = ["decode_body"]


def decode_body(body: bytes, headers: Iterable[tuple[bytes, bytes]], limit: int) -> bytes:
    """Undo the body's Content-Encoding (gzip or deflate), refusing more than ``limit`` bytes.

    Coding names are case-insensitive (``x-gzip`` is gzip); a gzip body of several members is
    read whole; a truncated stream or anything after the last member is refused. The header
    given twice is one list (RFC 9110, 5.3), as if its values were joined by commas.
    """
    values = [bytes(value) for key, value in headers if key == b"content-encoding"]
    if not values:
        return body
    encoding = values[0] if len(values) == 1 else b", ".join(values)
    coding = encoding.strip().lower()
    if coding == b"identity" or not coding:
        return body
    if coding == b"x-gzip":
        coding = b"gzip"
    if coding not in (b"gzip", b"deflate"):
        raise InvalidInputError(f"unsupported Content-Encoding {encoding.decode('latin-1')!r}")
    return _inflate(body, coding.decode(), limit)


def _inflate(body: bytes, coding: str, limit: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    rest = body
    try:
        for _ in range(_MAX_MEMBERS):
            inflater = zlib.decompressobj(wbits)
            data = inflater.decompress(rest, limit - size + 1)
            size += len(data)
            if size > limit or inflater.unconsumed_tail:
                raise PayloadTooLargeError(f"decompressed request body exceeds {limit} bytes")
            parts.append(data)
            if not inflater.eof:
                raise InvalidInputError(f"the {coding} body is truncated")
            rest = inflater.unused_data
            if not rest:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if coding != "gzip" or not rest.startswith(b"\x1f\x8b"):
                raise InvalidInputError(f"{len(rest)} bytes follow the end of the {coding} body")
    except zlib.error as exc:
        raise InvalidInputError(f"body is not valid {coding} data: {exc}") from exc
    raise InvalidInputError(f"the gzip body has more than {_MAX_MEMBERS} members")


# Concatenated gzip members are legal but rare; thousands of empty ones only cost CPU.
_MAX_MEMBERS = 64
