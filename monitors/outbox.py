"""Webhook events decided but not yet delivered, so a slow or failing receiver never stalls the
consumer and a crash never loses an alert.

An event enters the outbox when its window is evaluated; it is written with its partition's
snapshot before it is queued for delivery, and leaves the outbox once every target answered (or
its retries ran out, which is recorded). After a crash the snapshot's pending events are queued
again with the same ids (idempotency keys), so a receiver sees each alert at least once and can
drop repeats. One background task delivers from a bounded queue; what does not fit waits in the
outbox for the next dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from monitors.webhooks import Webhooks

__all__ = ["Outbox"]

log = logging.getLogger(__name__)


class Outbox:
    """Pending events per partition, delivered in the background; start/stop as a context."""

    def __init__(self, webhooks: Webhooks, max_queued: int = 1000) -> None:
        self._webhooks = webhooks
        self._pending: dict[int, dict[str, str]] = {}  # partition -> event id -> body
        self._queued: set[str] = set()
        self._queue: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue(max_queued)
        self._task: asyncio.Task[None] | None = None

    def add(self, partition: int, event_id: str, body: bytes) -> None:
        """Hold an event; it is delivered after the next ``dispatch``."""
        self._pending.setdefault(partition, {})[event_id] = body.decode()

    def pending(self, partition: int) -> dict[str, str]:
        """The partition's undelivered events, for its snapshot."""
        return dict(self._pending.get(partition, {}))

    def restore(self, partition: int, pending: dict[str, str]) -> None:
        """Take back the events a snapshot held undelivered."""
        self._pending.setdefault(partition, {}).update(pending)

    def forget(self, partition: int) -> None:
        """Drop a revoked partition's events not queued yet (its next owner delivers them)."""
        events = self._pending.pop(partition, {})
        still = {i: b for i, b in events.items() if i in self._queued}
        if still:
            self._pending[partition] = still

    @property
    def size(self) -> int:
        return sum(len(events) for events in self._pending.values())

    def dispatch(self) -> None:
        """Queue every pending event that is not queued yet, as far as the queue has room."""
        for partition, events in self._pending.items():
            for event_id, body in events.items():
                if event_id in self._queued:
                    continue
                try:
                    self._queue.put_nowait((partition, event_id, body))
                except asyncio.QueueFull:
                    return  # the rest waits for the next dispatch
                self._queued.add(event_id)

    def start(self) -> None:
        """Start the delivery task (inside the running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._deliver(), name="monitor-webhooks")

    async def __aenter__(self) -> Outbox:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Deliver what is queued within the deadline, then stop; safe to call twice."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_timeout_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _deliver(self) -> None:
        while True:
            partition, event_id, body = await self._queue.get()
            try:
                await self._webhooks.send(event_id, body.encode())  # never raises
            except Exception:  # a bug in delivery must not end the loop
                log.exception("webhook delivery of %s failed", event_id)
            finally:
                self._queue.task_done()
                self._queued.discard(event_id)
                self._pending.get(partition, {}).pop(event_id, None)
