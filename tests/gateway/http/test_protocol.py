"""The gateway's HTTP protocol (gateway/http/server.py) on a fake transport: what no real
endpoint does on purpose, such as an answer that cannot be written."""

from __future__ import annotations

import asyncio
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
        pass

    def resume_reading(self) -> None:
        pass


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


def connection(
    endpoint: LaterEndpoint, keep_alive_s: float = 5.0, idle: asyncio.Event | None = None
) -> tuple[GatewayProtocol, Transport]:
    """A connection on a fake transport; ``idle`` is set each time its keep-alive timer fires."""

    class Protocol(GatewayProtocol):
        gateway_app = object()  # type: ignore[assignment]
        targets = {PATH: (endpoint, "m", None)}  # type: ignore[dict-item]

        def _close_idle(self) -> None:
            super()._close_idle()
            if idle is not None:
                idle.set()

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
    state = SimpleNamespace(connections=set(), total_requests=0)
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
