"""The gateway's HTTP/1.1 connection protocol for uvicorn: a lean ASGI server for whole requests.

uvicorn's httptools protocol streams each body through an ``asyncio.Event``, checks every
response header with regular expressions and writes the head and the body separately: about
30 us of CPU a request, as much as the gateway's whole inference path for a small model. Every
request the gateway serves is small and bounded (``server.max_body_bytes``), so this protocol
reads the whole body before the app runs, hands it over in one ``receive`` message and sends
the response in one write. uvicorn still owns the process: sockets, signals, the lifespan and
the graceful shutdown (it calls ``shutdown`` on every connection and waits for our tasks).

HTTP/1.1 keep-alive and pipelining (answered in order), ``Expect: 100-continue``, gzip/deflate
bodies (undone by the endpoints) are handled; chunked request bodies are read whole; upgrades
(websockets) and streaming responses are not: the gateway has neither.

A request head over the limits (``_limits.py``), one the parser refuses, a body over
``max_body_bytes``, one not whole within ``body_timeout_s`` of its head (408), or a chunked one
whose framing runs far ahead of its data (413: endless chunk extensions) is answered with its
4xx/5xx in turn, after every earlier request on the connection, and the connection then closes;
nothing after it is read.

For the overload benchmark only: with ``LOADTESTS_TIMINGS_FILE`` set in its environment, a
single-process gateway keeps, per inference call answered, the client's port, when its first
byte was seen, when its answer was about to be written (``time.perf_counter``: the machine's
monotonic clock, the same in every process) and its status, and writes them to that file
(float64 quadruples) on ``SIGUSR1``, starting over (``loadtests/bench_overload.py`` joins them
with what its generator saw); each pass of the garbage collector is kept there too (port
-1 - its generation, its start and end). Unset, the cost is one attribute test per inference
answer.
"""

from __future__ import annotations

import asyncio
import gc
import http
import logging
import os
import signal
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools
import orjson

from gateway.http._asgi import Reply
from gateway.http._limits import HeadError, HeadMeter, HttpLimits, check_framing, check_head
from gateway.http._paths import decode_path
from gateway.http.app import GatewayApp
from gateway.http.endpoints import LARGE_BODY_BYTES, Body, FastEndpoint

__all__ = ["TIMINGS_ENV", "GatewayProtocol", "HttpLimits", "protocol_class"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("uvicorn.access")

_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()
    for status in http.HTTPStatus
}
# Requests a connection may queue (pipelined) before the protocol stops reading from it.
_MAX_PIPELINED = 16
# URLs whose inference endpoint is remembered (the cache starts over when full); only short
# URLs are, so the cache holds at most about a megabyte whatever URLs clients send.
_MAX_TARGETS = 4096
_MAX_TARGET_URL = 256
# After refusing a request, how long the connection reads and drops what the client still
# sends before closing: closing with unread data resets the connection, and the client may
# lose the answer (nginx's lingering close).
_LINGER_S = 2.0


# httptools reports CONNECT as an upgrade too: it has no use on a model server either.
_NO_UPGRADES = "CONNECT and protocol upgrades (websockets) are not supported"


def _status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()


class _Request:
    """One parsed request, body included, waiting for its turn on the connection."""

    __slots__ = (
        "answered",
        "arrived",
        "body",
        "error",
        "headers",
        "keep_alive",
        "method",
        "url",
        "version",
    )

    def __init__(
        self,
        method: str,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body,
        keep_alive: bool,
        version: str,
        error: tuple[int, str] | None,
        arrived: float,
    ) -> None:
        self.arrived = arrived  # its first byte seen (time.perf_counter)
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.version = version
        self.error = error
        self.answered = False  # its answer handed to the transport


class _Exchange:
    """The ASGI ``receive``/``send`` pair of one request; the response is sent when complete."""

    __slots__ = ("_body", "_conn", "_head", "_request", "_sent_body", "done", "status")

    def __init__(self, conn: GatewayProtocol, request: _Request) -> None:
        self._conn = conn
        self._request = request
        self._sent_body = False
        self._head: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.status = 0
        self.done = False

    async def receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            body = self._request.body
            if not isinstance(body, bytes):
                body = b"".join(body)
            return {"type": "http.request", "body": body, "more_body": False}
        await self._conn.disconnected()  # nothing more to read: wait for the client to go
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.status:
            self.status = message["status"]
            self._head = list(message.get("headers", ()))
        elif kind == "http.response.body" and self.status and not self.done:
            body = message.get("body", b"")
            if body:
                self._body.append(body)
            if not message.get("more_body", False):
                self.done = True
                self._conn.respond(self._request, self.status, self._head, b"".join(self._body))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} after the response started")


class GatewayProtocol(asyncio.Protocol):
    """One client connection. Built by uvicorn with its config and shared server state.

    Inference calls (``POST`` to an infer or predict path of ``gateway_app``) skip ASGI: the
    endpoint's callback driver queues the request and answers from the batch's callback, with
    no task per request. Everything else is served by the ASGI app.
    """

    limits = HttpLimits()
    gateway_app: GatewayApp | None = None
    targets: dict[bytes, tuple[FastEndpoint, str, str | None] | None] = {}
    # Health and metrics: answered as soon as they are read, with no task (ahead of the
    # inference callbacks and tasks waiting on the loop), whatever the backlog.
    probes: dict[bytes, Callable[[], Reply]] = {}
    # The overload benchmark's per-request timings (see the module's docstring), or None.
    timings: array[float] | None = None

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._app = config.loaded_app
        self._loop = _loop or asyncio.get_running_loop()
        self._server_state = server_state
        self._app_state = app_state
        self._root_path: str = config.root_path
        self._keep_alive_s: float = config.timeout_keep_alive
        self._access_log = bool(config.access_log) and access_log.hasHandlers()
        self._parser = httptools.HttpRequestParser(self)
        # any version digits parse, so that check_head can answer 505 rather than 400
        self._parser.set_dangerous_leniencies(lenient_version=True)
        self._meter = HeadMeter(self.limits)
        self._transport: asyncio.Transport | None = None
        self._server: tuple[str, int] | None = None
        self._client: tuple[str, int] | None = None
        self._scheme = "http"
        self._queue: deque[_Request] = deque()
        self._active: asyncio.Future[Any] | None = None  # a task, or a batch future
        self._gone: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._closing = False
        self._rejected = False  # a request was refused: read nothing more, close once answered
        self._continue = False  # a request waits for its 100 Continue until those before it end
        self._lost = False
        self._write_paused = False
        self._read_paused = False
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._chunks = 0  # chunk-size lines read
        self._framing = 0  # what the chunked framing runs ahead of the data (check_framing)
        self._version = "1.1"
        self._in_head = False
        self._in_body = False  # a request's head is read, its body not yet whole
        self._messages = 0
        self._head_started = 0.0
        self._body_started = 0.0  # the body's clock: its head read, or its 100 Continue sent
        self._arrived = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods
        self._transport = transport  # type: ignore[assignment]
        self._server_state.connections.add(self)
        self._server = _address(transport.get_extra_info("sockname"))
        self._client = _address(transport.get_extra_info("peername"))
        if transport.get_extra_info("sslcontext") is not None:
            self._scheme = "https"
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._active is not None and not isinstance(self._active, asyncio.Task):
            self._active.cancel()  # an inference call waiting for its batch
        self._server_state.connections.discard(self)
        self._cancel_idle()
        for timer in (self._head_timer, self._body_timer, self._linger, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._queue.clear()
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return  # what follows a refused request is dropped unread
        self._last_read = self._loop.time()
        in_head, in_body, messages = self._in_head, self._in_body, self._messages
        size, chunks = self._size, self._chunks
        try:
            self._parser.feed_data(data)
            if self._in_head:
                if in_head and messages == self._messages:
                    self._meter.read(len(data))
                if self._head_timer is None:
                    self._arm_head_timer()
            elif self._in_body:
                # Only reads that begin and end inside one body are counted: at most the two
                # reads at its ends escape, and an endless body is all such reads.
                if in_body and messages == self._messages:
                    self._framing = check_framing(
                        self._framing, len(data), self._size - size, self._chunks - chunks
                    )
                if self._body_timer is None:
                    self._arm_body_timer()
        except HeadError as exc:
            self._reject(exc.status, exc.message)
        except _EarlyRefusal as exc:
            self._refuse_now(exc.reply)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HeadError):
                self._reject(cause.status, cause.message)
            elif isinstance(cause, _EarlyRefusal):
                self._refuse_now(cause.reply)
            else:
                log.error("error in the HTTP protocol's callbacks", exc_info=cause)
                self._reject(500, "internal error in the gateway; see its log")
        except httptools.HttpParserUpgrade:
            self._reject(400, _NO_UPGRADES)
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")

    # Flow control: while the client leaves answers unread (the transport's buffer is over its
    # high-water mark), nothing more is read and no request waiting on the connection is
    # started, probes included: a read of pipelined "GET /metrics" would otherwise render and
    # buffer an answer for each of them at once (64 KiB of requests, tens of MB of answers).
    # A client that reads nothing for ``send_timeout_s`` loses the connection.

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()
        if self._send_timer is None and not self._lost:
            self._send_timer = self._loop.call_later(
                self.limits.send_timeout_s, self._send_timed_out
            )

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._advance()

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if self._write_paused and not self._lost and self._transport is not None:
            log.info("dropping a connection from %s: its client read nothing for %g s",
                     self._client, self.limits.send_timeout_s)  # fmt: skip
            self._transport.abort()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: finish what was received, then close."""
        self._closing = True
        idle = self._active is None and not self._queue
        if (idle or self._linger is not None) and self._transport is not None:
            self._transport.close()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._arrived = time.perf_counter()
        self._url = b""
        self._headers = []
        self._body = []
        self._size = self._chunks = self._framing = 0
        self._in_head = True
        self._messages += 1
        self._head_started = self._last_read
        self._meter.reset()

    def on_url(self, url: bytes) -> None:
        self._meter.url(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._meter.header(len(name) + len(value))
        # A chunked body's trailer fields come here too: they count against the head's limits
        # but are not the request's headers (a trailer must not route, decode or authenticate a
        # request that a proxy in front checked by its headers).
        if self._in_head:
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._body_started = self._last_read
        self._arm_idle()  # the body's timer (the idle one may have ended while the head was read)
        self._version = self._parser.get_http_version()
        if self._parser.should_upgrade():
            raise HeadError(400, _NO_UPGRADES)
        expect = check_head(self._version, self._headers, self.limits.max_body_bytes)
        if self._active is None and not self._queue and self.gateway_app is not None:
            self._refuse_from_head(expect)
        if expect:
            if self._active is None and not self._queue:
                self._send_continue()
            else:  # sent once the requests before this one are answered
                self._continue = True

    def _refuse_from_head(self, expect: bool) -> None:
        """Refuse an inference call before its body is read, when admission would refuse it
        and the body is worth not reading: one the client waits to send (``Expect:
        100-continue``), or a large or chunked one. Raises ``_EarlyRefusal``; small bodies
        arrive with their head, and are refused once whole (a refusal parses nothing)."""
        if not expect and not _large_body(self._headers):
            return
        if self._parser.get_method() != b"POST":
            return
        try:
            target = self._target(self._url)
        except httptools.HttpParserInvalidURLError:
            return
        if target is not None:
            reply = target[0].refuse_early(target[1], self._headers)
            if reply is not None:
                raise _EarlyRefusal(reply)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.limits.max_body_bytes:  # chunked, or no Content-Length
            raise HeadError(413, f"request body exceeds {self.limits.max_body_bytes} bytes")
        self._body.append(body)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._transport is None or self._transport.is_closing():
            return  # an earlier answer closed the connection
        self._continue = False
        parser = self._parser
        # a large body is joined where it is decoded, off the loop (the endpoints' handle)
        chunks = self._body
        body: Body = chunks[0] if len(chunks) == 1 else chunks
        if len(chunks) > 1 and self._size <= LARGE_BODY_BYTES:
            body = b"".join(chunks)
        request = _Request(
            parser.get_method().decode("ascii"),
            self._url,
            self._headers,
            body,
            parser.should_keep_alive(),
            self._version,
            None,
            self._arrived,
        )
        self._queue.append(request)
        self._advance()

    # -- serving ------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Start the next queued request when none is being answered and the client reads its
        answers (a write-paused connection starts nothing: see ``pause_writing``); otherwise
        only decide whether to go on reading. The one place that decides what starts next."""
        if (
            self._active is None
            and self._queue
            and not (self._write_paused or self._lost or self._closing)
            and self._transport is not None
        ):
            self._start_next()
        else:
            self._update_reading()

    def _start_next(self) -> None:
        request = self._queue.popleft()
        if request.method == "POST" and request.error is None and self.gateway_app is not None:
            try:
                target = self._target(request.url)
            except httptools.HttpParserInvalidURLError:
                target, request.error = None, _BAD_URL
            if target is not None:
                self._handle_inference(request, *target)
                return
        elif request.method in ("GET", "HEAD") and request.error is None:
            probe = self.probes.get(request.url)
            if probe is not None:
                reply = probe()
                self.respond(request, reply.status, reply.headers, reply.body)
                self._finished()
                return
        task = self._loop.create_task(self._serve(request))
        self._active = task
        tasks = self._server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        self._update_reading()

    async def _serve(self, request: _Request) -> None:
        exchange = _Exchange(self, request)
        try:
            scope = None
            if request.error is None:
                try:
                    scope = self._scope(request)
                except httptools.HttpParserInvalidURLError:
                    request.error = _BAD_URL
            if scope is None or request.error is not None:
                status, message = request.error or _BAD_URL
                self.respond(request, status, _JSON, orjson.dumps({"error": message}), close=True)
                exchange.done = True
                return
            await self._app(scope, exchange.receive, exchange.send)
        except Exception:
            log.exception("unhandled error answering %s %s", request.method, request.url[:200])
            if not exchange.done:
                self.respond(request, 500, _JSON, _INTERNAL_ERROR, close=True)
                exchange.done = True
        finally:
            if not exchange.done and not self._lost:  # the app ended without answering
                log.error("the app sent no response to %s %s", request.method, request.url[:200])
                self.respond(request, 500, _JSON, b'{"error":"no response"}', close=True)
            self._finished()

    def _target(self, url: bytes) -> tuple[FastEndpoint, str, str | None] | None:
        """The inference endpoint of a POST to ``url``, remembered: callers repeat their URLs."""
        targets = self.targets
        try:
            return targets[url]
        except KeyError:
            pass
        assert self.gateway_app is not None
        target = self.gateway_app.inference_target(decode_path(httptools.parse_url(url).path))
        if len(url) <= _MAX_TARGET_URL:
            if len(targets) >= _MAX_TARGETS:
                targets.clear()
            targets[url] = target
        return target

    def _handle_inference(
        self, request: _Request, endpoint: FastEndpoint, name: str, version: str | None
    ) -> None:
        def respond(reply: Reply | None) -> None:
            # Called from a batch's callback or a later pass of the loop: an error here would
            # reach only the loop's handler, and the connection would wait for ever.
            try:
                if reply is None:
                    pass  # the caller has gone
                else:
                    timings = self.timings
                    if timings is not None and self._client is not None:  # the benchmark's hook
                        answered = (self._client[1], request.arrived, time.perf_counter())
                        timings.extend((*answered, reply.status))
                    if reply.head is not None:
                        self._write(request, reply.status, reply.head, reply.body, False)
                    else:
                        self.respond(request, reply.status, reply.headers, reply.body)
            except Exception:
                log.exception("error writing the answer to %s", request.url[:200])
                self._answer_failed(request)
            finally:
                self._finished()

        # ``handle`` answers at once (and returns None) or later, from the future's callback
        handle = endpoint.handle
        future = handle(name, version, request.headers, request.body, respond, request.arrived)
        if future is not None:
            self._active = future  # connection_lost cancels it: the request leaves its batch
            self._update_reading()

    def _scope(self, request: _Request) -> dict[str, Any]:
        url = httptools.parse_url(request.url)
        raw_path: bytes = url.path
        path = decode_path(raw_path)
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.version,
            "server": self._server,
            "client": self._client,
            "scheme": self._scheme,
            "method": request.method,
            "root_path": self._root_path,
            "path": self._root_path + path,
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "headers": request.headers,
            "state": self._app_state.copy(),
        }

    def respond(
        self,
        request: _Request,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        close: bool = False,
    ) -> None:
        """Write one whole response (head and body in one write)."""
        lines: list[bytes] = []
        for name, value in headers:
            lower = name.lower()
            if lower in (b"content-length", b"transfer-encoding", b"connection"):
                continue  # framing is ours: the body is complete
            if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                raise RuntimeError(f"response header {name!r} holds a line break")
            lines += (name, b": ", value, b"\r\n")
        self._write(request, status, b"".join(lines), body, close)

    def _write(self, request: _Request, status: int, head: bytes, body: bytes, close: bool) -> None:
        if self._lost or self._transport is None:
            return
        keep_alive = request.keep_alive and not close and not self._closing
        framing = b"content-length: %d\r\n\r\n" if keep_alive else _CLOSE_FRAMING
        payload = body if request.method != "HEAD" else b""
        self._transport.write(b"".join((_status_line(status), head, framing % len(body), payload)))
        request.answered = True
        self._server_state.total_requests += 1
        if self._access_log:
            access_log.info(
                '%s - "%s %s HTTP/%s" %d',
                self._client[0] if self._client else "-",
                request.method,
                request.url.decode("ascii", "replace"),
                request.version,
                status,
            )
        if not keep_alive:
            self._closing = True
            self._queue.clear()
            self._close()

    def _answer_failed(self, request: _Request) -> None:
        """Writing ``request``'s answer raised: answer 500 if nothing of it went out, and close
        the connection either way (a second failure aborts it)."""
        try:
            if not request.answered:
                self._write(request, 500, _JSON_HEAD, _INTERNAL_ERROR, True)
            else:
                self._closing = True
                self._close()
        except Exception:
            log.exception("error answering 500 to %s; aborting", request.url[:200])
            if self._transport is not None:
                self._transport.abort()

    def _finished(self) -> None:
        self._active = None
        if self._lost or self._transport is None:
            return
        if self._queue and not self._closing:
            self._advance()  # or resume_writing does, once the client reads
        elif self._closing:
            self._close()
        else:
            if self._continue:
                self._send_continue()
            self._update_reading()
            self._arm_idle()

    def _send_continue(self) -> None:
        self._continue = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            # the body's clocks start when it is invited
            self._last_read = self._body_started = self._loop.time()

    async def disconnected(self) -> None:
        """Wait until the client has gone."""
        if self._lost:
            return
        if self._gone is None:
            self._gone = self._loop.create_future()
        await asyncio.shield(self._gone)

    # -- connection housekeeping --------------------------------------------------------------

    def _reject(self, status: int, message: str) -> None:
        """Refuse the request being received: answer it after those before it, then close."""
        if self._rejected or self._lost or self._transport is None:
            return
        self._rejected = True
        self._in_head = self._continue = False
        self._update_reading()  # read nothing more
        error = (status, message)
        request = _Request("GET", self._url[:200], [], b"", False, "1.1", error, self._arrived)
        self._queue.append(request)
        self._advance()

    def _refuse_now(self, reply: Reply) -> None:
        """Answer the request whose head was just read with ``reply`` (nothing is ahead of it),
        read nothing more of it, and close: its body, if the client sends it, is dropped."""
        if self._rejected or self._lost or self._transport is None:
            return
        self._rejected = True
        self._in_head = self._continue = False
        self._update_reading()
        request = _Request("POST", b"", [], b"", False, self._version, None, self._arrived)
        if reply.head is not None:
            self._write(request, reply.status, reply.head, reply.body, True)
        else:
            self.respond(request, reply.status, reply.headers, reply.body, close=True)

    def _close(self) -> None:
        transport = self._transport
        if transport is None or self._linger is not None or transport.is_closing():
            return
        if not self._rejected or not transport.can_write_eof():
            transport.close()
            return
        # The client may still be sending the request we refused: end our side, and read and
        # drop its data (data_received ignores it) until it closes or the linger time is up.
        transport.write_eof()
        transport.resume_reading()
        self._linger = self._loop.call_later(_LINGER_S, transport.close)

    def _update_reading(self) -> None:
        if self._transport is None or self._lost or self._linger is not None:
            return
        pause = self._write_paused or self._rejected or len(self._queue) >= _MAX_PIPELINED
        if pause and not self._read_paused:
            self._transport.pause_reading()
            self._read_paused = True
        elif not pause and self._read_paused:
            self._transport.resume_reading()
            self._read_paused = False

    def _arm_idle(self) -> None:
        # One timer per connection, re-armed lazily: not a timer per request.
        if self._idle is None and not self._lost:
            self._idle = self._loop.call_later(self._keep_alive_s, self._close_idle)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _close_idle(self) -> None:
        self._idle = None
        if self._active is not None or self._queue or self._transport is None:
            return  # busy: re-armed when the connection is idle again
        if self._in_head or self._rejected:
            return  # the head timer, or the answer, ends it
        if self._read_paused:  # not reading is ours: the body's time starts again (the send
            self._last_read = self._loop.time()  # timer bounds a client that reads nothing)
        quiet_s = self._loop.time() - self._last_read
        if quiet_s >= self._keep_alive_s and self._in_body:
            # a body that stopped arriving: answered, not just dropped
            self._reject(408, f"the request body stopped arriving for {self._keep_alive_s:g} s")
        elif quiet_s >= self._keep_alive_s:
            self._transport.close()
        else:
            self._idle = self._loop.call_later(self._keep_alive_s - quiet_s, self._close_idle)

    def _arm_head_timer(self) -> None:
        deadline = self._head_started + self.limits.head_timeout_s
        self._head_timer = self._loop.call_at(deadline, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self._lost:
            return
        if self._read_paused:  # not reading is ours, not the client's: give it the time again
            self._head_started = self._loop.time()
        if self._loop.time() < self._head_started + self.limits.head_timeout_s:
            self._arm_head_timer()  # a later request's head, begun after this timer was set
            return
        self._reject(
            408, f"the request head did not arrive within {self.limits.head_timeout_s:g} s"
        )

    # The body's deadline: it must arrive whole within ``body_timeout_s`` of its head (or of
    # its 100 Continue), however it trickles; the keep-alive timer only ends a body that stops.
    # Once whole, the body is the app's: waiting for a model or a turn is not receiving.

    def _arm_body_timer(self) -> None:
        deadline = self._body_started + self.limits.body_timeout_s
        self._body_timer = self._loop.call_at(deadline, self._body_timed_out)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self._rejected or self._lost:
            return  # re-armed by the next read inside a body
        # waiting for its 100 Continue, or not read by us: the client's time starts again
        if self._continue or self._read_paused:
            self._body_started = self._loop.time()
        if self._loop.time() < self._body_started + self.limits.body_timeout_s:
            self._arm_body_timer()  # a later request's body, or time given again
            return
        self._reject(
            408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s"
        )


class _EarlyRefusal(Exception):
    """Raised from the parser's head callback: admission refused the request from its head."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


# A body this large is not read for a request that admission refuses from its head.
_EARLY_REFUSAL_BYTES = 64 * 1024


def _large_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return int(value) > _EARLY_REFUSAL_BYTES  # check_head has checked the digits
        if name == b"transfer-encoding":
            return True  # chunked: of any length
    return False


_JSON = [(b"content-type", b"application/json")]
_JSON_HEAD = b"content-type: application/json\r\n"
_INTERNAL_ERROR = orjson.dumps({"error": "internal error in the gateway; see its log"})
_CLOSE_FRAMING = b"content-length: %d\r\nconnection: close\r\n\r\n"
_BAD_URL = (400, "the request URL is not valid")


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


def protocol_class(
    limits: HttpLimits, gateway_app: GatewayApp | None = None
) -> type[GatewayProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``: the limits, the fast path."""
    probes = gateway_app.probes if gateway_app is not None else {}
    attributes: dict[str, object] = {
        "limits": limits,
        "gateway_app": gateway_app,
        "targets": {},
        "probes": {path.encode(): probe for path, probe in probes.items()},
    }
    path = os.environ.get(TIMINGS_ENV)
    if path:
        attributes["timings"] = _keep_timings(path)
    return type("GatewayProtocol", (GatewayProtocol,), attributes)


# The overload benchmark's hook: where the per-request timings go on SIGUSR1.
TIMINGS_ENV = "LOADTESTS_TIMINGS_FILE"


def _keep_timings(path: str) -> array[float]:
    """The timings' buffer; SIGUSR1 writes it to ``path`` (whole: written aside, then renamed)
    and empties it."""
    timings: array[float] = array("d")
    collecting = [0.0]

    def collector(phase: str, info: dict[str, int]) -> None:
        # the collector's passes, as rows with port -1 - generation: they stop the loop too
        if phase == "start":
            collecting[0] = time.perf_counter()
        else:
            timings.extend((-1 - info["generation"], collecting[0], time.perf_counter(), 0))

    gc.callbacks.append(collector)

    def dump(signum: int, frame: object) -> None:
        aside = f"{path}.part"
        with open(aside, "wb") as out:
            timings.tofile(out)
        os.replace(aside, path)
        del timings[:]

    signal.signal(signal.SIGUSR1, dump)
    return timings
