"""The health port: liveness, readiness and metrics answered from a thread of their own.

The main port answers its probes on the event loop, so a loop busy with thousands of ready
connections answers them late, and Kubernetes would restart a pod that is merely busy. Here a
daemon thread (``http.server``) answers them from what the loop publishes: a heartbeat (the
time of its latest periodic callback) and, with it, the readiness answer of that moment. The
thread reads that shared state only; it never calls into the loop or waits for it. Liveness
means "the loop is making progress": 503 only once the heartbeat is older than the stall limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.errors import ConfigError
from gateway.http._asgi import Reply
from monitors.sockets import listening_socket

__all__ = ["MAX_HEALTH_CONNECTIONS", "HealthServer", "Heartbeat", "bind_health"]

log = logging.getLogger(__name__)

_JSON = [(b"content-type", b"application/json")]
_STARTING = Reply(503, orjson.dumps({"ready": False, "error": "the gateway is starting"}), _JSON)
_STOPPING = Reply(503, orjson.dumps({"ready": False, "error": "the gateway is stopping"}), _JSON)


class Heartbeat:
    """What the event loop publishes for the health thread: when it last ran its periodic
    callback, and the readiness answer it computed then."""

    def __init__(self, stall_limit_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_limit_s = stall_limit_s
        # the loop beats several times within the limit, so a beat late by load alone is
        # never near it
        self.interval_s = min(0.5, stall_limit_s / 4)
        self._clock = clock
        self._state: tuple[float, Reply] = (clock(), _STARTING)  # one attribute: read whole

    def beat(self, ready: Reply) -> None:
        """Called on the event loop: it is making progress, and this is its readiness now."""
        self._state = (self._clock(), ready)

    def stall(self) -> float | None:
        """Seconds since the latest beat, when past the stall limit; otherwise None."""
        beat_at, _ = self._state
        quiet_s = self._clock() - beat_at
        return quiet_s if quiet_s > self.stall_limit_s else None

    def live(self) -> Reply:
        quiet_s = self.stall()
        if quiet_s is None:
            return _reply({"live": True}, 200)
        return _reply({"live": False, "error": self._stalled(quiet_s)}, 503)

    def ready(self) -> Reply:
        _, ready = self._state
        quiet_s = self.stall()
        if quiet_s is None:
            return ready
        return _reply({"ready": False, "error": self._stalled(quiet_s)}, 503)

    def _stalled(self, quiet_s: float) -> str:
        return (
            f"the event loop has made no progress for {quiet_s:.1f} s "
            f"(server.health_stall_limit_s: {self.stall_limit_s:g} s)"
        )

    def run_on(
        self, loop: asyncio.AbstractEventLoop, ready: Callable[[], Reply]
    ) -> Callable[[], None]:
        """Beat on ``loop`` every ``interval_s`` with ``ready()``'s answer until the returned
        function is called (then not ready: stopping)."""
        handle: asyncio.TimerHandle | None = None

        def tick() -> None:
            nonlocal handle
            self.beat(ready())
            handle = loop.call_later(self.interval_s, tick)

        def stop() -> None:
            if handle is not None:
                handle.cancel()
            self.beat(_STOPPING)  # the lifespan has ended: the models are gone

        tick()
        return stop


def bind_health(host: str, port: int) -> socket.socket:
    """The health port's listening socket; ConfigError naming the setting when it cannot be
    bound. Worker processes of ``--workers N`` accept on the one socket their supervisor binds,
    as they do on the main port."""
    try:
        return listening_socket(host, port, "server.health_port", 64)
    except OSError as exc:
        raise ConfigError(str(exc)) from exc


# How long one connection may hold its thread, however it sends. A timeout on each read alone
# let a client that sent a header byte every few seconds (or a request every few seconds) keep
# its thread for good: 32 of them and every probe was answered 503, and the pod restarted.
MAX_CONNECTION_S = 10.0


class HealthServer:
    """The health port's HTTP/1.1 server, in a daemon thread; ``metrics``: the registry that
    ``/metrics`` renders (None: answered 404, naming the port that has them). A connection is
    served for at most ``connection_s``, then closed."""

    def __init__(
        self,
        sock: socket.socket,
        heartbeat: Heartbeat,
        metrics: CollectorRegistry | None,
        *,
        metrics_elsewhere: str = "",
        connection_s: float = MAX_CONNECTION_S,
    ) -> None:
        self._server = _Server(sock, heartbeat, metrics, metrics_elsewhere, connection_s)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.5,), name="health", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.socket.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


# Connections served at a time: kubelet's probes and a scraper need a few. Each is a thread,
# and threads beyond these would only take the interpreter from the event loop; the next
# connection is answered 503 and closed.
MAX_HEALTH_CONNECTIONS = 32
_BUSY = orjson.dumps(
    {"error": f"the health port serves at most {MAX_HEALTH_CONNECTIONS} connections at a time"}
)
_BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY)
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        sock: socket.socket,
        heartbeat: Heartbeat,
        metrics: CollectorRegistry | None,
        metrics_elsewhere: str,
        connection_s: float,
    ) -> None:
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        # Workers share the socket: another may take a connection this one was woken for,
        # and a blocking accept would then hold the thread (and shutdown) until the next.
        sock.setblocking(False)
        self.socket = sock
        self.heartbeat = heartbeat
        self.metrics = metrics
        self.metrics_elsewhere = metrics_elsewhere
        self.connection_s = connection_s
        self._slots = threading.BoundedSemaphore(MAX_HEALTH_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):  # a fresh socket's buffer takes it whole
                request.sendall(_BUSY_REPLY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread was started to give it back
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Reads(socket.SocketIO):
    """A connection's reads, each allowed only what is left of the connection's time."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__(sock, "rb")
        self._connection = sock
        self._deadline = deadline

    def readinto(self, b: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the connection's time on the health port is up")
        self._connection.settimeout(left)
        return super().readinto(b)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a client that stops sending mid-request gives its thread back
    server: _Server

    def setup(self) -> None:
        super().setup()
        # http.server closes a connection whose read times out (TimeoutError), unanswered
        self.rfile.close()
        deadline = time.monotonic() + self.server.connection_s
        self.rfile = io.BufferedReader(_Reads(self.connection, deadline))

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        heartbeat = self.server.heartbeat
        if path == "/v2/health/live":
            self._send(heartbeat.live())
        elif path == "/v2/health/ready":
            self._send(heartbeat.ready())
        elif path == "/metrics":
            self._send(self._metrics())
        else:
            self._send(_reply({"error": f"no route GET {path} on the health port"}, 404))

    def _metrics(self) -> Reply:
        registry = self.server.metrics
        if registry is None:
            return _reply(
                {"error": f"/metrics is not served here; {self.server.metrics_elsewhere}"}, 404
            )
        try:
            body = generate_latest(registry)
        except RuntimeError as exc:  # a collector read a collection the loop resized meanwhile
            log.warning("health port: /metrics failed (%s); answering 503", exc)
            return _reply({"error": f"metrics could not be collected, try again: {exc}"}, 503)
        return Reply(200, body, [(b"content-type", CONTENT_TYPE_LATEST.encode())])

    def _not_allowed(self) -> None:
        path = self.path.split("?", 1)[0]
        message = f"method {self.command} is not allowed on {path}; use GET"
        self._send(_reply({"error": message}, 405), [("allow", "GET")])

    def __getattr__(self, name: str) -> Any:
        # http.server looks up do_<METHOD>; every method but GET is answered 405
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _send(self, reply: Reply, extra: list[tuple[str, str]] | None = None) -> None:
        self.send_response_only(reply.status)
        for name, value in reply.headers:
            self.send_header(name.decode("latin-1"), value.decode("latin-1"))
        for key, text in extra or []:
            self.send_header(key, text)
        self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (a malformed request line, an oversized header): JSON too
        self.close_connection = True
        self.request_version = self.protocol_version  # headers even for a garbled request line
        self._send(_reply({"error": message or explain or "bad request"}, code))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health port: " + format, *args)


def _reply(doc: object, status: int) -> Reply:
    return Reply(status, orjson.dumps(doc), _JSON)
