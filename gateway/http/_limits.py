"""What a request head may be: sizes, counts, time, version, framing. Checked by the protocol.

The gateway's HTTP protocol (``server.py``) calls these while httptools parses, so a head over a
limit is refused as soon as it passes the limit, before the parser or the process has buffered
much of it: the URL on each fragment, the header count on each header, the header block on each
header and on every read that ends inside the head (httptools holds a header line until it
ends, so one endless line shows only as reads that never leave the head). A chunked body's
framing is held to ``check_framing``: httptools reports no chunk extension, and holds a trailer
line whole until it ends.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_FRAMING_BYTES",
    "HeadError",
    "HeadMeter",
    "HttpLimits",
    "check_framing",
    "check_head",
]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The connection protocol's limits (``server.*`` settings); defaults as nginx or Envoy."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    send_timeout_s: float = 30.0


class HeadError(Exception):
    """The request head is refused: the connection answers ``status`` in turn, then closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HeadMeter:
    """Counts one request head against the limits as it arrives; raises HeadError."""

    __slots__ = ("_header_bytes", "_headers", "_limits", "_raw_bytes", "_url_bytes")

    def __init__(self, limits: HttpLimits) -> None:
        self._limits = limits
        self._url_bytes = 0
        self._header_bytes = 0
        self._headers = 0
        self._raw_bytes = 0

    def reset(self) -> None:
        """A new request begins."""
        self._url_bytes = self._header_bytes = self._headers = self._raw_bytes = 0

    def url(self, size: int) -> None:
        self._url_bytes += size
        if self._url_bytes > self._limits.max_url_bytes:
            raise HeadError(414, f"the request URL exceeds {self._limits.max_url_bytes} bytes")

    def header(self, size: int) -> None:
        self._headers += 1
        if self._headers > self._limits.max_headers:
            raise HeadError(431, f"the request has more than {self._limits.max_headers} headers")
        self._header_bytes += size + 4  # name, ": ", value, CRLF
        if self._header_bytes > self._limits.max_header_bytes:
            raise HeadError(431, self._too_large())

    def read(self, size: int) -> None:
        """A whole read fell inside this head (the parser may be holding a line of it)."""
        self._raw_bytes += size
        # The raw count holds the request line too (the URL is counted exactly, fragment by
        # fragment), so it gets the URL's allowance and a line's: never more than the head.
        if self._raw_bytes > self._limits.max_url_bytes + self._limits.max_header_bytes + 1024:
            raise HeadError(431, self._too_large())

    def _too_large(self) -> str:
        return f"the request header block exceeds {self._limits.max_header_bytes} bytes"


def check_head(version: str, headers: list[tuple[bytes, bytes]], max_body_bytes: int) -> bool:
    """Refuse a head the gateway will not serve (raises HeadError); True: send 100 Continue.

    ``headers`` have lower-case names. Refused: versions other than HTTP/1.0 and 1.1 (0.9 is 400,
    the rest 505), HTTP/1.1 without exactly one Host, transfer codings other than ``chunked``
    (501), a Content-Length over ``max_body_bytes`` (413, before the body is read), and
    expectations other than ``100-continue`` (417).
    """
    if version != "1.1" and version != "1.0":
        if version == "0.9":
            raise HeadError(400, "HTTP/0.9 requests are not supported")
        raise HeadError(505, f"HTTP/{version} is not supported; send HTTP/1.1")
    hosts = 0
    expect = False
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            # the parser has checked the digits; over 20 of them is over any limit
            if len(value) > 20 or int(value) > max_body_bytes:
                raise HeadError(413, f"request body exceeds {max_body_bytes} bytes")
        elif name == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                raise HeadError(
                    501, f"Transfer-Encoding {value.decode('latin-1')!r}: only chunked is supported"
                )
        elif name == b"expect":
            if value.strip().lower() != b"100-continue":
                raise HeadError(417, f"unsupported expectation {value.decode('latin-1')!r}")
            expect = True
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        raise HeadError(400, "an HTTP/1.1 request needs exactly one Host header")
    return expect and version == "1.1"  # an HTTP/1.0 client does not wait for it


# How far a chunked body's framing may run ahead of its data (Go's net/http limit).
MAX_FRAMING_BYTES = 16 * 1024


def check_framing(excess: int, wire: int, data: int, chunks: int) -> int:
    """Count one read that fell inside a body: ``wire`` bytes, ``data`` of them body data,
    ``chunks`` chunk-size lines ended in it. Returns the framing's new excess; raises HeadError
    (413) past ``MAX_FRAMING_BYTES``.

    As Go's net/http, each chunk may carry 16 bytes of framing and twice its data's size; the
    rest (chunk extensions, zeros before a size, a trailer) is excess, and a read whose data
    pays for more than its framing pays back only down to zero, so no body banks credit for
    later. A Content-Length body's reads are all data: never any excess.
    """
    excess += wire - 3 * data - 16 * chunks
    if excess > MAX_FRAMING_BYTES:
        raise HeadError(
            413,
            f"the chunked body's framing (chunk extensions, chunk-size lines, trailer) runs"
            f" over {MAX_FRAMING_BYTES} bytes beyond its data",
        )
    return excess if excess > 0 else 0
