"""The health port's listener: live, ready and stalled from the heartbeat; 404, 405; the port."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway.errors import ConfigError
from gateway.http import HealthServer, Heartbeat, bind_health
from gateway.http._asgi import Reply
from gateway.http.health import MAX_HEALTH_CONNECTIONS


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_READY = Reply(200, b'{"ready":true}', [(b"content-type", b"application/json")])


@contextmanager
def _health(heartbeat: Heartbeat, metrics: CollectorRegistry | None) -> Iterator[str]:
    server = HealthServer(
        bind_health("127.0.0.1", 0), heartbeat, metrics, metrics_elsewhere="ask the main port"
    )
    server.start()
    try:
        host, port = server.address
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        server.stop()  # safe twice


def test_live_ready_and_a_stalled_loop() -> None:
    clock = _Clock()
    heartbeat = Heartbeat(stall_limit_s=30.0, clock=clock)
    with _health(heartbeat, None) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        starting = client.get("/v2/health/ready")
        assert starting.status_code == 503
        assert starting.json()["error"] == "the gateway is starting"

        heartbeat.beat(_READY)
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True}

        clock.now += 29.0  # slow beats under load stay far inside the limit
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200

        clock.now += 2.0  # 31 s without a beat: wedged
        live = client.get("/v2/health/live")
        assert live.status_code == 503
        assert live.json()["live"] is False
        assert "31.0 s" in live.json()["error"]
        assert "server.health_stall_limit_s" in live.json()["error"]
        stalled = client.get("/v2/health/ready")
        assert stalled.status_code == 503
        assert "no progress" in stalled.json()["error"]

        heartbeat.beat(_READY)  # the loop is back
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200


def test_metrics_render_the_registry_or_name_where_they_are() -> None:
    registry = CollectorRegistry()
    counter = Counter("probe_things_total", "things", registry=registry)
    counter.inc(3)
    heartbeat = Heartbeat(stall_limit_s=30.0)
    with _health(heartbeat, registry) as url:
        response = httpx.get(f"{url}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "probe_things_total 3.0" in response.text
    with _health(heartbeat, None) as url:
        elsewhere = httpx.get(f"{url}/metrics", timeout=10)
        assert elsewhere.status_code == 404
        assert "ask the main port" in elsewhere.json()["error"]


def test_unknown_paths_and_other_methods() -> None:
    heartbeat = Heartbeat(stall_limit_s=30.0)
    with _health(heartbeat, None) as url, httpx.Client(base_url=url, timeout=10) as client:
        missing = client.get("/v2/models/x/infer")
        assert missing.status_code == 404
        assert missing.json() == {"error": "no route GET /v2/models/x/infer on the health port"}
        for method in ("POST", "PUT", "DELETE", "HEAD"):
            refused = client.request(method, "/v2/health/live")
            assert refused.status_code == 405, method
            assert refused.headers["allow"] == "GET"
            if method != "HEAD":
                assert refused.json()["error"].startswith(f"method {method} is not allowed")
        # the connection is kept alive across all of them (HTTP/1.1)
        assert client.get("/v2/health/live").status_code == 200


def test_a_bad_request_line_gets_a_json_error() -> None:
    with _health(Heartbeat(stall_limit_s=30.0), None) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GARBAGE\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b'{"error":' in answer


def test_connections_over_the_bound_get_503_and_the_port_recovers() -> None:
    # each connection is a thread: a flood of idle ones is answered 503 beyond the bound
    # instead of starting a thread each
    with _health(Heartbeat(stall_limit_s=30.0), None) as url:
        host, port = url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=10)
                for _ in range(MAX_HEALTH_CONNECTIONS)]  # fmt: skip
        try:
            # the bound counts threads that have started: until all have, one more may pass
            deadline = time.monotonic() + 10
            while True:
                answer = _raw_get(host, int(port))
                if answer.startswith(b"HTTP/1.1 503 "):
                    break
                assert time.monotonic() < deadline, answer[:200]
            assert b"at most 32 connections at a time" in answer
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 15  # the closed connections' threads end and give back
        while not _raw_get(host, int(port)).startswith(b"HTTP/1.1 200 "):
            assert time.monotonic() < deadline


def test_a_connection_is_held_for_a_bounded_time_however_it_sends() -> None:
    # a read timeout alone let a trickled head (or a request every few seconds) hold a thread
    # for good: 32 such clients, and every probe was answered 503
    heartbeat = Heartbeat(stall_limit_s=30.0)
    server = HealthServer(bind_health("127.0.0.1", 0), heartbeat, None, connection_s=1.0)
    server.start()
    try:
        host, port = server.address
        with (
            socket.create_connection((host, port), timeout=10) as trickling,
            socket.create_connection((host, port), timeout=10) as asking,
        ):
            trickling.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
            sends = {
                trickling: b"X: y\r\n",  # a header line now and then, never the end
                asking: b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n",
            }
            answers = b""
            started = time.monotonic()
            while sends:
                assert time.monotonic() - started < 5, f"{len(sends)} connection(s) still held"
                for sock, data in list(sends.items()):
                    try:
                        sock.sendall(data)
                        if sock is asking:
                            answers += sock.recv(4096)
                    except OSError:
                        pass
                    if _closed(sock):
                        del sends[sock]
                time.sleep(0.2)
            assert b"HTTP/1.1 200 " in answers
    finally:
        server.stop()


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (what it still sent on it is read and dropped)."""
    sock.settimeout(0.05)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:  # reset
        return True
    finally:
        sock.settimeout(10)


def _raw_get(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_a_port_in_use_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            ConfigError, match=rf"server.health_port: cannot listen on 127.0.0.1:{port}"
        ):
            bind_health("127.0.0.1", port)


async def test_the_loop_beats_until_stopped() -> None:
    clock = _Clock()
    heartbeat = Heartbeat(stall_limit_s=0.2, clock=clock)
    assert heartbeat.interval_s == pytest.approx(0.05)
    ready_calls: list[int] = []
    third = asyncio.Event()

    def ready() -> Reply:
        ready_calls.append(len(ready_calls))
        if len(ready_calls) == 3:
            third.set()
        return _READY

    stop = heartbeat.run_on(asyncio.get_running_loop(), ready)
    assert ready_calls == [0]  # a beat at once
    clock.now += 1.0
    assert heartbeat.stall() is not None
    await asyncio.wait_for(third.wait(), 10)  # the loop beats on its own
    assert heartbeat.stall() is None
    stop()
    assert heartbeat.ready().status == 503
    assert b"the gateway is stopping" in heartbeat.ready().body
    beats = len(ready_calls)
    await asyncio.sleep(0.2)
    assert len(ready_calls) == beats
