"""The gateway's HTTP protocol (gateway/http/server.py) on a fake transport: what no real
endpoint does on purpose, such as an answer that cannot be written or a model that answers
only when told, and how request bodies are timed and their chunked framing bounded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.http._asgi import Reply
from gateway.http._limits import HttpLimits
from gateway.http.app import GatewayApp
from gateway.http.server import GatewayProtocol, protocol_class

PATH = b"/v2/models/m/infer"
REQUEST = b"POST " + PATH + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"


class Transport:
    """What the protocol calls on uvloop's transports, keeping what was written."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.aborted = False
        self.broken = False  # every write raises, as a transport whose socket went bad
        self.wrote = asyncio.Event()
        self.paused = asyncio.Event()  # the protocol reads nothing more for now

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1234) if name in ("sockname", "peername") else None

    def write(self, data: bytes) -> None:
        if self.broken:
            raise RuntimeError("the socket went bad")
        self.written += data
        self.wrote.set()

    def close(self) -> None:
        self.closed = True
        self.wrote.set()

    def abort(self) -> None:
        self.closed = self.aborted = True
        self.wrote.set()

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.paused.set()

    def resume_reading(self) -> None:
        self.paused.clear()


class LaterEndpoint:
    """An inference endpoint that answers each call in a later pass of the loop with the
    reply it is given."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies

    def handle(
        self,
        name: str,
        version: str | None,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        respond: Callable[[Reply | None], None],
        arrived: float,
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        reply = self.replies.pop(0)
        loop.call_soon(respond, reply)
        return future

    def refuse_early(self, name: str, headers: list[tuple[bytes, bytes]]) -> Reply | None:
        return None  # admission takes every request


class HeldEndpoint:
    """An inference endpoint whose calls wait, as for a slow model, until ``release``."""

    def __init__(self) -> None:
        self.waiting: list[Callable[[Reply | None], None]] = []

    def handle(
        self,
        name: str,
        version: str | None,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        respond: Callable[[Reply | None], None],
        arrived: float,
    ) -> asyncio.Future[Any]:
        self.waiting.append(respond)
        return asyncio.get_running_loop().create_future()

    def refuse_early(self, name: str, headers: list[tuple[bytes, bytes]]) -> Reply | None:
        return None

    def release(self) -> None:
        """Answer the oldest waiting call: 200."""
        self.waiting.pop(0)(Reply(200, b"{}", head=b"content-type: application/json\r\n"))


def connection(
    endpoint: LaterEndpoint | HeldEndpoint,
    keep_alive_s: float = 5.0,
    idle: asyncio.Event | None = None,
    body_timeout_s: float = 60.0,
    body_timer: asyncio.Event | None = None,
) -> tuple[GatewayProtocol, Transport]:
    """A connection on a fake transport; ``idle`` is set each time its keep-alive timer fires,
    ``body_timer`` each time its body's deadline timer does."""

    class Protocol(GatewayProtocol):
        gateway_app = object()  # type: ignore[assignment]
        targets = {PATH: (endpoint, "m", None)}  # type: ignore[dict-item]
        limits = HttpLimits(body_timeout_s=body_timeout_s)

        def _close_idle(self) -> None:
            super()._close_idle()
            if idle is not None:
                idle.set()

        def _body_timed_out(self) -> None:
            super()._body_timed_out()
            if body_timer is not None:
                body_timer.set()

    return _connect(Protocol, keep_alive_s)


def connection_to(app: GatewayApp, limits: HttpLimits) -> tuple[GatewayProtocol, Transport]:
    """A connection of the gateway's protocol for ``app`` (its lifespan running), on a fake
    transport: the real endpoints, in the test's own process."""
    return _connect(protocol_class(limits, app), 5.0)


def _connect(
    protocol_type: type[GatewayProtocol], keep_alive_s: float
) -> tuple[GatewayProtocol, Transport]:
    config = SimpleNamespace(
        loaded_app=None, root_path="", timeout_keep_alive=keep_alive_s, access_log=False
    )
    state = SimpleNamespace(connections=set(), tasks=set(), total_requests=0)
    protocol = protocol_type(config, state, {})
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def answered(transport: Transport, count: int) -> None:
    while transport.written.count(b"HTTP/1.1 ") < count:
        transport.wrote.clear()
        await transport.wrote.wait()


async def test_an_answer_that_cannot_be_written_is_a_500_and_the_connection_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = Reply(200, b"{}", headers=[(b"x-bad", b"a\r\nb")])  # a header holding a line break
    endpoint = LaterEndpoint([broken, Reply(200, b"{}", head=b"")])
    protocol, transport = connection(endpoint)
    protocol.data_received(REQUEST + REQUEST)  # two pipelined: the second is never served
    await asyncio.wait_for(answered(transport, 1), 5)
    assert transport.written.startswith(b"HTTP/1.1 500 ")
    assert b"connection: close" in transport.written
    assert b"internal error in the gateway" in transport.written
    assert transport.closed
    assert len(endpoint.replies) == 1, "the second request was never handed to the endpoint"
    assert "error writing the answer" in caplog.text


async def test_a_connection_whose_writes_fail_is_aborted_not_left_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    protocol, transport = connection(LaterEndpoint([Reply(200, b"{}", head=b"")]))
    protocol.data_received(REQUEST)
    transport.broken = True  # the answer, and then the 500, fail to be written
    while not transport.closed:
        transport.wrote.clear()
        await asyncio.wait_for(transport.wrote.wait(), 5)
    assert transport.aborted
    assert transport.written == b""
    assert "aborting" in caplog.text


async def test_a_body_that_stops_after_a_slow_head_is_answered_408() -> None:
    """The keep-alive timer fires while the head is still arriving (the head's own timer has
    it then); once the head is whole, a body that stops arriving is still timed."""
    idle = asyncio.Event()
    protocol, transport = connection(LaterEndpoint([]), keep_alive_s=0.05, idle=idle)
    protocol.data_received(b"POST " + PATH + b" HTTP/1.1\r\nHost: t\r\n")
    await asyncio.wait_for(idle.wait(), 5)  # fired in the head: nothing done
    assert transport.written == b""
    assert not transport.closed
    protocol.data_received(b"Content-Length: 10\r\n\r\n{}")  # 2 of the 10 bytes, then nothing
    await asyncio.wait_for(answered(transport, 1), 5)
    assert transport.written.startswith(b"HTTP/1.1 408 ")
    assert b"the request body stopped arriving" in transport.written


async def test_answers_written_later_keep_the_connection_serving() -> None:
    ok = Reply(200, b'{"ok":1}', head=b"content-type: application/json\r\n")
    protocol, transport = connection(LaterEndpoint([ok, ok]))
    protocol.data_received(REQUEST)
    await asyncio.wait_for(answered(transport, 1), 5)
    protocol.data_received(REQUEST)
    await asyncio.wait_for(answered(transport, 2), 5)
    assert transport.written.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert not transport.closed
    protocol.connection_lost(None)


# -- the body's deadline and the chunked framing's bound -----------------------------------------

CHUNKED = b"POST " + PATH + b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
HEAD = b"POST " + PATH + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n"


async def trickle(protocol: GatewayProtocol, transport: Transport, piece: bytes) -> int:
    """Send ``piece`` every 20 ms until the protocol answers or stops reading (500 at most);
    how many were sent."""
    for sent in range(500):
        if transport.written or transport.paused.is_set():
            return sent
        protocol.data_received(piece)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(transport.wrote.wait(), 0.02)
    return 500


@pytest.mark.parametrize(
    ("head", "piece"),
    [
        (b"POST " + PATH + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n", b" "),
        (CHUNKED, b"1\r\n \r\n"),  # one-byte chunks
        (CHUNKED + b"1", b";e=v"),  # one chunk-size line's extensions, slowly
    ],
    ids=["content-length", "chunks", "chunk extensions"],
)
async def test_a_trickled_body_is_answered_408_at_its_deadline(head: bytes, piece: bytes) -> None:
    # it never stops for the keep-alive (5 s): only the deadline ends it
    protocol, transport = connection(LaterEndpoint([]), body_timeout_s=0.3)
    protocol.data_received(head)
    assert await trickle(protocol, transport, piece) < 500
    assert transport.written.startswith(b"HTTP/1.1 408 ")
    assert b'{"error":"the request body did not arrive within 0.3 s"}' in transport.written
    assert transport.closed


async def test_a_body_that_arrived_in_time_may_wait_past_the_deadline_for_the_model() -> None:
    fired = asyncio.Event()
    held = HeldEndpoint()
    protocol, transport = connection(held, body_timeout_s=0.05, body_timer=fired)
    protocol.data_received(HEAD)  # the body's deadline is set
    protocol.data_received(b"{}" + HEAD)  # the body, whole; the next request pipelined
    protocol.data_received(b"{}")  # its body, whole, while the first waits for the model
    await asyncio.wait_for(fired.wait(), 5)
    assert transport.written == b""
    held.release()
    await asyncio.wait_for(answered(transport, 1), 5)
    held.release()
    await asyncio.wait_for(answered(transport, 2), 5)
    assert transport.written.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert not transport.closed


async def test_a_pipelined_body_past_its_deadline_is_answered_408_after_the_request_before() -> (
    None
):
    held = HeldEndpoint()
    protocol, transport = connection(held, body_timeout_s=0.2)
    protocol.data_received(REQUEST)  # waits for the model all along
    protocol.data_received(b"POST " + PATH + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 99\r\n\r\n")
    assert await trickle(protocol, transport, b" ") < 500  # refused: reads nothing more
    assert transport.written == b"", "the refusal waits for the answer before it"
    held.release()
    await asyncio.wait_for(answered(transport, 2), 5)
    first, second = transport.written.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ")
    assert second.startswith(b"408 ")
    assert b"the request body did not arrive within 0.2 s" in second
    assert transport.closed


async def test_the_deadline_of_a_body_that_waits_for_its_100_continue_starts_at_the_100() -> None:
    fired = asyncio.Event()
    held = HeldEndpoint()
    protocol, transport = connection(held, body_timeout_s=0.05, body_timer=fired)
    protocol.data_received(REQUEST)  # waits for the model: the 100 Continue waits for it
    protocol.data_received(HEAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
    for _ in range(3):  # the deadline passes, over and over, while the client waits
        fired.clear()
        await asyncio.wait_for(fired.wait(), 5)
    assert transport.written == b""
    held.release()
    await asyncio.wait_for(answered(transport, 2), 5)
    assert transport.written.endswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    protocol.data_received(b"{}")
    held.release()
    await asyncio.wait_for(answered(transport, 3), 5)
    assert transport.written.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert not transport.closed


async def test_a_body_the_gateway_does_not_read_is_not_timed() -> None:
    fired = asyncio.Event()
    protocol, transport = connection(LaterEndpoint([]), body_timeout_s=0.05, body_timer=fired)
    protocol.data_received(HEAD + b"{")
    protocol.pause_writing()  # the client reads no answer: nothing is read from it either
    for _ in range(3):
        fired.clear()
        await asyncio.wait_for(fired.wait(), 5)
    assert transport.written == b""
    protocol.resume_writing()  # reading again: the client has the deadline's time from here
    await asyncio.wait_for(answered(transport, 1), 5)
    assert transport.written.startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize(
    ("start", "piece"),
    [
        (CHUNKED + b"5", b";e=" + b"v" * 4093),  # one chunk-size line's endless extension
        (CHUNKED, (b"1;e=" + b"v" * 1018 + b"\r\n \r\n") * 4),  # 1-byte chunks, 1 KiB extensions
        (CHUNKED, b"0" * 4096),  # an endless run of zeros before a chunk's size
        (CHUNKED + b"2\r\n{}\r\n0\r\nx-trailer: ", b"v" * 4096),  # one endless trailer line
    ],
    ids=["extension", "extended chunks", "zeros", "trailer"],
)
async def test_chunked_framing_far_ahead_of_its_data_is_refused_413(
    start: bytes, piece: bytes
) -> None:
    protocol, transport = connection(LaterEndpoint([]))
    protocol.data_received(start)
    sent = await trickle(protocol, transport, piece)
    assert sent * len(piece) <= 32 * 1024, "refused soon after 16 KiB"
    assert transport.written.startswith(b"HTTP/1.1 413 ")
    assert (
        b"chunked body's framing (chunk extensions, chunk-size lines, trailer)" in transport.written
    )
    assert transport.closed


async def test_chunked_framing_that_its_data_pays_for_is_served() -> None:
    ok = Reply(200, b"{}", head=b"")
    protocol, transport = connection(LaterEndpoint([ok, ok]))
    protocol.data_received(CHUNKED)
    for _ in range(20):  # 20,000 one-byte chunks with a short extension each: 340 KB
        protocol.data_received(b"1;name=value\r\nx\r\n" * 1000)
    protocol.data_received(b"0\r\n\r\n")
    protocol.data_received(CHUNKED + b"10000;" + b"e" * 4000 + b"\r\n")  # one 64 KiB chunk
    for _ in range(16):
        protocol.data_received(b"x" * 4096)
    protocol.data_received(b"\r\n0\r\n\r\n")
    await asyncio.wait_for(answered(transport, 2), 5)
    assert transport.written.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert not transport.closed
