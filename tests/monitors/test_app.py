"""The monitor's HTTP side: what its router refuses is a JSON error like its routes' own."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from monitors.app import create_status_app
from monitors.metrics import MonitorMetrics
from monitors.service import MonitorService
from monitors.settings import MonitorSettings


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
