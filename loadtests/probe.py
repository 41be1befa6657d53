"""A liveness prober like the kubelet's: a new connection per probe, ``GET /v2/health/live``.

It runs in its own process (light imports, raised priority where allowed), so that the load
generator's busy event loop cannot delay a probe and make a healthy server look slow.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from multiprocessing.connection import Connection

__all__ = ["probe_liveness"]

_REQUEST = b"GET /v2/health/live HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"


def probe_liveness(
    host: str,
    port: int,
    start_at: float,
    duration_s: float,
    period_s: float,
    timeout_s: float,
    out: Connection,
) -> None:
    """Probe every ``period_s`` from ``start_at`` (``time.perf_counter``) for ``duration_s``;
    send back ``[(offset from start_at, latency or None, status or error)]`` on ``out``."""
    with contextlib.suppress(OSError):
        os.nice(-10)  # the generator shares this CPU; root may put the prober first
    probes: list[tuple[float, float | None, str]] = []
    tick = start_at
    while tick < start_at + duration_s:
        pause = tick - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        sent = time.perf_counter()
        try:
            status = _probe(host, port, timeout_s)
            probes.append((sent - start_at, time.perf_counter() - sent, status))
        except OSError as exc:
            probes.append((sent - start_at, None, type(exc).__name__))
        tick += period_s
    out.send(probes)
    out.close()


def _probe(host: str, port: int, timeout_s: float) -> str:
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(_REQUEST)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer[9:12].decode("ascii", "replace") or "empty"
