"""A worker's side of its link to the supervisor (``gateway.assembly.Peers``).

Route changes: without a control topic they go through the supervisor, which applies each on
every worker in one order before the admin API answers (``_RelayedRoutes``); with one, each
worker follows the topic and the supervisor only collects every worker's confirmation
(``_ConfirmedRoutes``). Metrics: ``/metrics`` answers with the whole server's, merged by the
supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.errors import NotReadyError
from gateway.traffic import RouteChannel
from gateway.workers._families import Family, families_of, render
from gateway.workers._link import Link, LinkClosedError, RemoteError

__all__ = ["WorkerPeers"]

log = logging.getLogger(__name__)

Change = dict[str, Any]
Handler = Callable[[Change], Awaitable[None]]


class WorkerPeers:
    """The other workers of this server, as seen from one of them."""

    def __init__(self, sock: socket.socket, slot: int, timeout_s: float) -> None:
        self.slot = slot
        self._timeout_s = timeout_s
        self._registry: CollectorRegistry | None = None
        self._routes: _RelayedRoutes | _ConfirmedRoutes | None = None
        self._closing = False
        self._watch: asyncio.Task[None] | None = None
        self._link = Link(
            sock,
            {"apply": self._apply, "confirm": self._confirm, "samples": self._samples},
            name=f"worker {slot}",
        )

    async def __aenter__(self) -> WorkerPeers:
        await self._link.start()
        self._watch = asyncio.create_task(self._supervisor_gone(), name="supervisor-watch")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
        await self._link.close()

    def route_channel(self, control: RouteChannel | None) -> RouteChannel:
        """The channel the route store publishes on: ``control`` (the topic) wrapped with the
        workers' confirmation, or the supervisor itself when there is no topic."""
        if control is None:
            self._routes = _RelayedRoutes(self._link, self._timeout_s)
        else:
            self._routes = _ConfirmedRoutes(control, self._link, self._timeout_s)
        return self._routes

    async def ready(self, registry: CollectorRegistry) -> None:
        """This worker serves now; its metrics are in ``registry``."""
        self._registry = registry
        await self._link.request("ready", self._timeout_s)

    async def exposition(self) -> bytes:
        """The whole server's metrics in the Prometheus text format."""
        try:
            families = await self._link.request("collect", self._timeout_s + 5)
        except (LinkClosedError, RemoteError, TimeoutError) as exc:
            raise NotReadyError(f"metrics of the other workers unavailable: {exc}") from exc
        return render(families)

    async def _apply(self, change: Change) -> None:
        if not isinstance(self._routes, _RelayedRoutes):
            raise RuntimeError("this worker follows the control topic")
        await self._routes.apply(change)

    async def _confirm(self, change_id: str) -> None:
        if not isinstance(self._routes, _ConfirmedRoutes):
            raise RuntimeError("this worker takes route changes from the supervisor")
        await self._routes.wait_applied(change_id)

    async def _samples(self) -> list[Family]:
        return [] if self._registry is None else families_of(self._registry)

    async def _supervisor_gone(self) -> None:
        await self._link.closed.wait()
        if not self._closing:
            # nobody would restart this worker or forward a signal to it: drain and end
            log.error("the supervisor went away; worker %d shuts down", self.slot)
            os.kill(os.getpid(), signal.SIGTERM)


class _RelayedRoutes:
    """Route changes ordered by the supervisor and applied on every worker before it answers."""

    def __init__(self, link: Link, timeout_s: float) -> None:
        self._link = link
        self._timeout_s = timeout_s
        self._handler: Handler | None = None
        self._order = asyncio.Lock()

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        async with self._order:  # changes sent after the snapshot wait for it
            latest = await self._link.request("hello", self._timeout_s)
            for change in latest:
                await handler(change)

    async def apply(self, change: Change) -> None:
        async with self._order:
            if self._handler is None:
                raise RuntimeError("route changes arrived before the route store started")
            await self._handler(change)

    async def publish(self, event: Change) -> None:
        await _ask(self._link, "publish", self._timeout_s * 2, change=event)

    async def stop(self) -> None:
        return None


class _ConfirmedRoutes:
    """The control topic, with every worker's confirmation before a change counts as made."""

    def __init__(self, control: RouteChannel, link: Link, timeout_s: float) -> None:
        self._control = control
        self._link = link
        self._timeout_s = timeout_s
        self._applied: OrderedDict[str, None] = OrderedDict()
        self._waiters: dict[str, asyncio.Event] = {}

    async def start(self, handler: Handler) -> None:
        async def apply_then_record(change: Change) -> None:
            try:
                await handler(change)
            finally:
                self._record(str(change.get("id", "")))

        await self._link.request("hello", self._timeout_s)  # from now on it asks us to confirm
        await self._control.start(apply_then_record)

    async def publish(self, event: Change) -> None:
        await self._control.publish(event)
        await _ask(self._link, "barrier", self._timeout_s * 2, change_id=event["id"])

    async def stop(self) -> None:
        await self._control.stop()

    async def wait_applied(self, change_id: str) -> None:
        if change_id in self._applied:
            return
        event = self._waiters.setdefault(change_id, asyncio.Event())
        try:
            async with asyncio.timeout(self._timeout_s):
                await event.wait()
        except TimeoutError:
            self._waiters.pop(change_id, None)
            raise

    def _record(self, change_id: str) -> None:
        self._applied[change_id] = None
        while len(self._applied) > 10_000:
            self._applied.popitem(last=False)
        waiter = self._waiters.pop(change_id, None)
        if waiter is not None:
            waiter.set()


async def _ask(link: Link, kind: str, timeout_s: float, **payload: Any) -> None:
    try:
        await link.request(kind, timeout_s, **payload)
    except (LinkClosedError, RemoteError, TimeoutError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else str(exc)
        raise NotReadyError(f"route change not in force on every worker: {reason}") from exc
