"""Accepting connections: every waiting one (up to a bound) in one pass of the event loop.

uvloop, through libuv, accepts one connection per pass of the event loop. A pass of a busy
gateway reads hundreds of sockets and runs batches, and lasts milliseconds, so a burst of new
connections waits in the listening socket's queue pass after pass: a client pool that grows
when the gateway slows down (all its connections busy), or the kubelet's probes, which open a
connection each. Measured at twice the capacity (``loadtests/bench_overload.py``): the first
requests of about 500 connections opened at the overload's start waited up to 1.9 s before
the gateway read them, while the requests on open connections waited 25 ms at most.

``AcceptingServer`` is uvicorn's server with its listening sockets served by ``Acceptor``:
a reader on the socket that accepts up to ``batch`` connections each time the socket is
readable (as asyncio's own loop does) and hands each to the loop as an accepted socket.
With ``gateway serve --workers N`` every worker does this on the shared socket; a busy
worker's loop comes round later, so the others take most of a burst.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

import uvicorn

from gateway.errors import ConfigError
from monitors.sockets import listening_socket

__all__ = ["AcceptingServer", "Acceptor", "bind_main"]

log = logging.getLogger(__name__)

# Connections accepted per readiness of the listening socket: as many as wait, up to this.
ACCEPT_BATCH = 128
# Out of descriptors or memory: how long to stop accepting before trying again.
_RETRY_S = 0.1
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    """Accepts the connections of one listening socket on the running loop, up to ``batch``
    each time it is readable, and opens each with ``factory``'s protocol."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None = None,
        batch: int = ACCEPT_BATCH,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._factory = factory
        self._ssl = ssl_context
        self._batch = batch
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        sock.setblocking(False)
        self._listen()

    def _listen(self) -> None:
        self._retry = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self._batch):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while it waited in the queue
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                log.error("cannot accept connections (%s); trying again in %s s", exc, _RETRY_S)
                self._loop.remove_reader(self._sock.fileno())
                self._retry = self._loop.call_later(_RETRY_S, self._listen)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._open(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except (OSError, ssl.SSLError) as exc:  # the client went, or its TLS handshake failed
            log.debug("an accepted connection could not be opened: %s", exc)
            conn.close()

    def close(self) -> None:
        """Accept nothing more (the socket stays open: its owner closes it)."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())


def bind_main(host: str, port: int, backlog: int) -> socket.socket:
    """The main port's listening socket; ConfigError naming the setting when it cannot be
    bound (``gateway serve --workers N``: the supervisor binds it for its workers)."""
    try:
        return listening_socket(host, port, "server.port", backlog)
    except OSError as exc:
        raise ConfigError(str(exc)) from exc


class AcceptingServer(uvicorn.Server):
    """uvicorn's server, its listening sockets served by ``Acceptor``s: run it with the bound
    sockets (``bind_main`` binds one)."""

    _acceptors: list[Acceptor]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if not sockets:
            raise ValueError("AcceptingServer runs with its listening sockets")
        self._acceptors = []
        await super().startup(sockets=[])  # the lifespan; uvicorn listens on nothing itself
        config = self.config

        def factory() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        for sock in sockets:
            sock.listen(config.backlog)
            self._acceptors.append(Acceptor(sock, factory, config.ssl))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for acceptor in getattr(self, "_acceptors", []):
            acceptor.close()
        await super().shutdown(sockets)
