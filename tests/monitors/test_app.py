"""The monitor's HTTP side: what its router refuses is a JSON error like its routes' own."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from monitors.app import create_status_app
from monitors.http_json import http_server
from monitors.metrics import MonitorMetrics
from monitors.service import MonitorService
from monitors.settings import MonitorSettings
from monitors.sockets import listening_socket


def monitor(tmp_path: Path) -> MonitorService:
    settings = MonitorSettings(registry_root=tmp_path / "registry", state_dir=tmp_path / "state")
    return MonitorService(settings, MonitorMetrics(CollectorRegistry()))


async def test_what_the_router_refuses_is_a_json_error(tmp_path: Path) -> None:
    # Starlette's own plain-text 'Not Found' and 'Method Not Allowed', and a 307 to /status
    # built from the Host header for /status/
    transport = httpx.ASGITransport(app=create_status_app(monitor(tmp_path)))
    async with httpx.AsyncClient(transport=transport, base_url="http://monitor") as client:
        unknown = await client.get("/windows/only-a-model")
        slash = await client.get("/status/")
        post = await client.post("/status", content=b"{}")
        delete = await client.delete("/windows/m/1")
        fine = await client.get("/status")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "no route GET /windows/only-a-model"}
    assert slash.status_code == 404
    assert slash.json() == {"error": "no route GET /status/"}
    assert post.status_code == 405
    assert post.json() == {"error": "method POST is not allowed on /status; use GET, HEAD"}
    assert post.headers["allow"] == "GET, HEAD"
    assert delete.status_code == 405
    assert "method DELETE is not allowed on /windows/m/1" in delete.json()["error"]
    assert fine.status_code == 200


async def test_a_limit_of_zero_windows_is_refused(tmp_path: Path) -> None:
    # ?limit=0 answered every window kept (up to history.max_windows), not none
    transport = httpx.ASGITransport(app=create_status_app(monitor(tmp_path)))
    async with httpx.AsyncClient(transport=transport, base_url="http://monitor") as client:
        zero = await client.get("/windows/m/1?limit=0")
        one = await client.get("/windows/m/1?limit=1&since=0")
    assert zero.status_code == 400
    assert zero.json()["error"].startswith("'limit' must be at least 1")
    assert one.status_code == 404, "no window of m/1 yet: the query itself is fine"


async def test_an_endless_header_is_refused_at_a_bound(tmp_path: Path) -> None:
    # the monitor's and the worker's server: on uvicorn's default parser a header line however
    # long was buffered whole (200 MB sent, the monitor 280 MB bigger)
    sock = listening_socket("127.0.0.1", 0, "http.port")
    host, port = sock.getsockname()[:2]
    server = http_server(create_status_app(monitor(tmp_path)), host, port)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # uvicorn has no event
            assert not serving.done()
            await asyncio.sleep(0.01)
        answer, sent = await asyncio.to_thread(_send_endless_header, host, port)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert sent < 32 << 20, f"{sent} bytes of one header taken"  # the rest: socket buffers
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            assert (await client.get("/status")).status_code == 200
    finally:
        server.should_exit = True
        await serving


def _send_endless_header(host: str, port: int) -> tuple[bytes, int]:
    """Send one header line of up to 64 MiB; the answer, and how much of it was sent."""
    with socket.create_connection((host, port), timeout=10) as client:
        client.sendall(b"GET /status HTTP/1.1\r\nHost: m\r\nX-Endless: ")
        sent = 0
        try:
            while sent < 64 << 20:
                client.sendall(b"a" * 65536)
                sent += 65536
        except OSError:  # refused and closed: the rest cannot be sent
            pass
        answer = b""
        try:
            while chunk := client.recv(4096):
                answer += chunk
        except OSError:
            pass
        return answer, sent
