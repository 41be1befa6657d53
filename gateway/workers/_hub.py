"""The supervisor's side of its links to the workers: route changes in force on every worker,
and one set of metrics for the whole server.

Route changes. Without a control topic the hub is the order of changes: a worker sends its
change here, the hub hands it to every worker (the sender included), one change at a time,
and answers once each has applied it; a worker that starts (or restarts) gets the latest
change of every endpoint first. With a control topic, Kafka orders the changes and every worker
applies them as it reads them; the hub only asks each worker to confirm that it has applied a
given change before the sender's admin API answers.

Metrics. A scrape of any worker's ``/metrics`` asks the hub, which asks every worker for its
samples and merges them (``_families``); the counters of a worker that ended are kept, so the
sums never go back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.metrics import WORKER_AGGREGATION
from gateway.workers._families import Family, families_of, merge, summable
from gateway.workers._link import Handler, Link, LinkClosedError

__all__ = ["Hub"]

log = logging.getLogger(__name__)


class Hub:
    """What the workers ask of the supervisor, and what it asks of them."""

    def __init__(self, apply_timeout_s: float, collect_timeout_s: float = 5.0) -> None:
        self._apply_timeout_s = apply_timeout_s
        self._collect_timeout_s = collect_timeout_s
        self._connected: dict[int, Link] = {}
        self._serving: set[int] = set()
        self._following: dict[int, Link] = {}  # workers that take route changes (said hello)
        self._latest: dict[str, tuple[int, dict[str, Any]]] = {}  # endpoint -> (order, change)
        self._order = 0
        self._sequence = asyncio.Lock()
        self._snapshots: dict[int, list[Family]] = {}
        self._retired: list[Family] = []  # counters of workers that ended
        own = CollectorRegistry()
        self._own = own
        self.serving = Gauge("gateway_workers", "Worker processes serving now.", registry=own)
        self.restarts = Counter(
            "gateway_worker_restarts",
            "Worker processes restarted after they ended unexpectedly.",
            registry=own,
        )

    def handlers(self, slot: int, on_ready: Callable[[], None]) -> dict[str, Handler]:
        """The requests worker ``slot`` may make."""

        async def hello() -> list[dict[str, Any]]:
            async with self._sequence:  # no change goes out between the snapshot and joining
                self._following[slot] = self._connected[slot]
                # the worker holds none of these routes yet: each is its route's state, to take
                # up whatever revision it was made from (older changes are not kept)
                latest = sorted(self._latest.values(), key=_first)
                return [{**change, "catch_up": True} for _, change in latest]

        async def ready() -> None:
            self._serving.add(slot)
            self.serving.set(len(self._serving))
            on_ready()

        async def publish(change: dict[str, Any]) -> None:
            async with self._sequence:
                if self._applies(change):  # else every worker skips it: it is no route's state
                    self._order += 1
                    self._latest[change["endpoint"]] = (self._order, change)
                await self._everywhere("apply", change=change)

        async def barrier(change_id: str) -> None:
            await self._everywhere("confirm", change_id=change_id)

        async def collect() -> list[Family]:
            return await self.collect()

        return {
            "hello": hello,
            "ready": ready,
            "publish": publish,
            "barrier": barrier,
            "collect": collect,
        }

    def attach(self, slot: int, link: Link) -> None:
        self._connected[slot] = link

    def detach(self, slot: int) -> None:
        """Worker ``slot`` ended: keep what it counted, forget the rest."""
        self._connected.pop(slot, None)
        self._following.pop(slot, None)
        self._serving.discard(slot)
        snapshot = self._snapshots.pop(slot, None)
        if snapshot:
            self._retired = merge([self._retired, summable(snapshot)], WORKER_AGGREGATION)
        self.serving.set(len(self._serving))

    async def collect(self) -> list[Family]:
        """Every worker's metrics merged, with the supervisor's own."""
        links = dict(self._connected)
        answers = await asyncio.gather(
            *(link.request("samples", self._collect_timeout_s) for link in links.values()),
            return_exceptions=True,
        )
        for slot, answer in zip(links, answers, strict=True):
            if isinstance(answer, BaseException):
                # a busy or dying worker: its last answer stands in (its counters only grow)
                log.warning("worker %d: no metrics this scrape: %r", slot, answer)
            elif self._connected.get(slot) is links[slot]:
                # not a worker that ended (its counts are kept already) and was replaced in its
                # slot while the other workers answered
                self._snapshots[slot] = answer
        sources = [self._retired, *self._snapshots.values(), families_of(self._own)]
        return merge(sources, WORKER_AGGREGATION)

    def _applies(self, change: dict[str, Any]) -> bool:
        """Whether the workers apply ``change``: they skip one not made on the revision they
        are at, which is the latest applied change's (0 before any)."""
        latest = self._latest.get(change["endpoint"])
        revision = latest[1]["after"]["revision"] if latest is not None else 0
        return bool(change["base_revision"] == revision)

    async def _everywhere(self, kind: str, **payload: Any) -> None:
        links = dict(self._following)
        answers = await asyncio.gather(
            *(link.request(kind, self._apply_timeout_s, **payload) for link in links.values()),
            return_exceptions=True,
        )
        problems = []
        for slot, answer in zip(links, answers, strict=True):
            if isinstance(answer, LinkClosedError):
                continue  # it ended; when it restarts it starts from the latest routes
            if isinstance(answer, TimeoutError):
                problems.append(f"worker {slot}: no answer within {self._apply_timeout_s:g} s")
            elif isinstance(answer, BaseException):
                problems.append(f"worker {slot}: {answer}")
        if problems:
            raise RuntimeError("; ".join(problems))


def _first(item: tuple[int, dict[str, Any]]) -> int:
    return item[0]
