"""The line between the supervisor and one worker: requests and replies over a Unix socket pair.

Either side may ask the other (``await link.request("apply", change=...)``); the other side's
handler for that kind runs and its return value travels back. Messages are JSON, each framed
by its length, so a large reply (a worker's metrics) needs no line-length limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

__all__ = ["Handler", "Link", "LinkClosedError", "RemoteError"]

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]

_HEADER = struct.Struct("!I")


class LinkClosedError(ConnectionError):
    """The other side went away (its process ended) before it answered."""


class RemoteError(RuntimeError):
    """The other side's handler failed; the message is its error."""


class Link:
    """One end of the line: ``request`` asks the other end, ``handlers`` answer it."""

    def __init__(self, sock: socket.socket, handlers: dict[str, Handler], name: str) -> None:
        self.name = name
        self._sock = sock
        self._handlers = handlers
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def start(self) -> None:
        """Start reading the other side's messages (on the running loop)."""
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
        self._reader_task = asyncio.create_task(self._read(reader), name=f"link-{self.name}")

    async def request(self, kind: str, timeout_s: float, **payload: Any) -> Any:
        """Ask the other side; its handler's result, or ``RemoteError`` / ``LinkClosedError`` /
        ``TimeoutError``."""
        if self._writer is None or self.closed.is_set():
            raise LinkClosedError(f"{self.name}: the link is closed")
        ident = next(self._ids)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = waiter
        try:
            self._send({"id": ident, "kind": kind, "payload": payload})
            async with asyncio.timeout(timeout_s):
                return await waiter
        finally:
            self._pending.pop(ident, None)

    async def close(self) -> None:
        """Stop reading and close the socket; safe twice."""
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for handler_task in list(self._tasks):
            handler_task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self._fail_pending()

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is None:
            raise LinkClosedError(f"{self.name}: the link is closed")
        body = orjson.dumps(message)
        self._writer.write(_HEADER.pack(len(body)) + body)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                message = orjson.loads(await reader.readexactly(size))
                if "reply" in message:
                    waiter = self._pending.get(message["reply"])
                    if waiter is not None and not waiter.done():
                        if "error" in message:
                            waiter.set_exception(RemoteError(message["error"]))
                        else:
                            waiter.set_result(message.get("result"))
                    continue
                task = asyncio.create_task(self._answer(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the other process ended: every open request fails below
        finally:
            self.closed.set()
            self._fail_pending()

    async def _answer(self, message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"reply": message["id"]}
        handler = self._handlers.get(message["kind"])
        try:
            if handler is None:
                raise RuntimeError(f"no handler for {message['kind']!r}")
            reply["result"] = await handler(**message["payload"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the asker gets the error; this side carries on
            reply["error"] = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(LinkClosedError, OSError):
            self._send(reply)

    def _fail_pending(self) -> None:
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(LinkClosedError(f"{self.name}: the other side went away"))
