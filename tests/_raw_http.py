"""Raw-socket HTTP/1.1 for the protocol tests: build requests, read framed responses."""

from __future__ import annotations

import socket

__all__ = ["Response", "closed", "post", "read_responses", "read_until_closed"]

Response = tuple[int, dict[str, str], bytes]


def post(path: bytes, payload: bytes, extra: bytes = b"") -> bytes:
    """A POST with a JSON content type and a Content-Length."""
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n" % len(payload) + extra + b"\r\n" + payload
    )


def _parse(buffer: bytes) -> tuple[Response | None, bytes]:
    """One whole response from the front of ``buffer`` (None if incomplete), and the rest."""
    if b"\r\n\r\n" not in buffer:
        return None, buffer
    head, rest = buffer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    if len(rest) < length:
        return None, buffer
    return (status, headers, rest[:length]), rest[length:]


def read_responses(sock: socket.socket, count: int, timeout_s: float = 10.0) -> list[Response]:
    """Read ``count`` whole final responses (Content-Length framed; 1xx are skipped)."""
    sock.settimeout(timeout_s)
    buffer = b""
    responses: list[Response] = []
    while len(responses) < count:
        response, buffer = _parse(buffer)
        if response is None:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(responses)} responses: {buffer[:300]!r}")
            buffer += chunk
        elif response[0] >= 200:
            responses.append(response)
    return responses


def read_until_closed(sock: socket.socket, timeout_s: float = 15.0) -> tuple[list[Response], bool]:
    """Every response until the server closes; False if it neither closed nor answered in time.

    Interim 100 responses are kept; a reset counts as closed.
    """
    sock.settimeout(timeout_s)
    buffer = b""
    responses: list[Response] = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        except TimeoutError:
            return responses, False
        if not chunk:
            return responses, True
        buffer += chunk
        while True:
            response, buffer = _parse(buffer)
            if response is None:
                break
            responses.append(response)


def closed(sock: socket.socket, timeout_s: float = 5.0) -> bool:
    """Whether the server closes the connection within ``timeout_s`` (sending nothing more)."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
