"""Route changes: validated, loaded before traffic moves, audited, and shared with replicas.

A change is made on the latest state of its route and names the revision it was made from.
Changes of one endpoint are made one at a time on a replica; across replicas the control
topic orders them, and a change whose revision is no longer the route's is skipped by every
replica alike (the proposer then makes it again on the new state, or answers 412 when the
caller asked for that revision with If-Match). So no change is lost, and the audit trail's
before/after entries chain.

Nothing changes unless all of it can: the models a change needs are loaded first (beside what
serves), the audit log must be writable, and the control topic must take the change; any of
these failing answers an error and leaves routes and models as they were.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from gateway.errors import GatewayError, InvalidInputError, NotReadyError, UnknownModelError
from gateway.metrics import GatewayMetrics
from gateway.traffic.control import RouteChannel
from gateway.traffic.router import Traffic
from gateway.traffic.routes import Route, follow
from gateway.traffic.updates import RouteUpdate, new_ramp, validation_message

__all__ = [
    "AuditLog",
    "AuditLogError",
    "ControlUnavailableError",
    "RevisionMismatchError",
    "RouteConflictError",
    "RouteStore",
]

log = logging.getLogger(__name__)

_ATTEMPTS = 5  # a change made again on newer state at most this often before giving up
Outcome = Literal["applied", "conflict"]


class RevisionMismatchError(GatewayError):
    """The caller asked for a revision of the route that is no longer (or not yet) current."""


class RouteConflictError(GatewayError):
    """Changes from other replicas kept coming first; this one was not applied."""


class ControlUnavailableError(NotReadyError):
    """The control topic did not take the change; nothing changed."""


class AuditLogError(NotReadyError):
    """The audit log cannot be written; nothing changed."""


class AuditLog:
    """Who changed which route when, from what to what: a JSON-lines file plus recent memory."""

    def __init__(self, path: Path | None, keep: int = 1000) -> None:
        self._path = path
        self.entries: deque[dict[str, Any]] = deque(maxlen=keep)

    def load(self) -> None:
        """Read the file's latest entries (used when there is no control topic to replay)."""
        if self._path is None or not self._path.exists():
            return
        for line in self._path.read_text().splitlines():
            if line.strip():
                self.entries.append(json.loads(line))

    def remember(self, change: dict[str, Any]) -> None:
        # a restarted worker reads the file, then is handed the latest changes again
        if not any(entry.get("id") == change.get("id") for entry in self.entries):
            self.entries.append(change)

    def check(self) -> None:
        """Raise AuditLogError when the file cannot be appended to (blocking I/O)."""
        if self._path is None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a"):
                pass
        except OSError as exc:
            raise AuditLogError(
                f"the audit log {self._path} cannot be written ({exc}); nothing changed"
            ) from exc

    def write(self, change: dict[str, Any]) -> None:
        """Append one change (blocking I/O); raises OSError."""
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a") as fh:
            fh.write(json.dumps(change, sort_keys=True) + "\n")

    def history(self, endpoint: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The latest changes, oldest first."""
        entries = [e for e in self.entries if endpoint is None or e["endpoint"] == endpoint]
        return entries[-limit:]


class RouteStore:
    """Applies route changes on this replica and, through the control topic, on every replica."""

    def __init__(
        self,
        traffic: Traffic,
        audit: AuditLog,
        metrics: GatewayMetrics,
        channel: RouteChannel | None,
        replica_id: str,
        apply_timeout_s: float = 30.0,
    ) -> None:
        self.traffic = traffic
        self.audit = audit
        self._metrics = metrics
        self._channel = channel
        self._replica_id = replica_id
        self._apply_timeout_s = apply_timeout_s
        # id -> its proposer, waiting for this replica to apply it: the outcome, an audit error
        self._waiting: dict[str, asyncio.Future[tuple[Outcome, str | None]]] = {}
        self._mine: dict[str, None] = {}  # ids of changes this process published, to audit
        self._locks: dict[str, asyncio.Lock] = {}
        traffic.change = self.propose

    async def __aenter__(self) -> RouteStore:
        if self._channel is None:
            self.audit.load()
        else:
            await self._channel.start(self._on_event)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._channel is not None:
            await self._channel.stop()

    def revision(self, endpoint: str) -> int:
        """The route's revision (0 for one that does not exist yet)."""
        route = self.traffic.routes.get(endpoint)
        return route.revision if route is not None else 0

    async def replace(
        self, endpoint: str, data: dict[str, Any], actor: str, if_match: str | None = None
    ) -> dict[str, Any]:
        """Create or replace a route from an operator's JSON (PUT)."""
        data = {k: v for k, v in data.items() if k not in ("buckets", "revision", "endpoint")}
        if isinstance(data.get("canary"), dict):
            data["canary"] = {**data["canary"], **new_ramp(self._replica_id)}
        try:
            route = Route.model_validate({**data, "endpoint": endpoint})
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc)) from exc
        # keep the bucket table where it can, so sticky keys move only as weights require
        return await self._change(endpoint, lambda current: follow(current, route), actor, "PUT",
                                  if_match)  # fmt: skip

    async def update(
        self, endpoint: str, data: dict[str, Any], actor: str, if_match: str | None = None
    ) -> dict[str, Any]:
        """Apply a partial change (PATCH) on the route's latest state."""
        update = RouteUpdate.parse(data, self._replica_id)
        if endpoint not in self.traffic.routes:
            raise UnknownModelError(f"no route {endpoint!r}")

        def patched(current: Route | None) -> Route:
            if current is None:
                raise UnknownModelError(f"no route {endpoint!r}")
            return update.apply(current)

        return await self._change(endpoint, patched, actor, "PATCH", if_match)

    async def propose(self, route: Route, actor: str, reason: str = "") -> dict[str, Any]:
        """Apply ``route``, made from its revision (a canary's step): refused with
        RevisionMismatchError when the route changed meanwhile."""
        return await self._change(route.endpoint, lambda _: route, actor, reason,
                                  f'"{route.revision}"')  # fmt: skip

    async def _change(
        self,
        endpoint: str,
        make: Callable[[Route | None], Route],
        actor: str,
        reason: str,
        if_match: str | None,
    ) -> dict[str, Any]:
        lock = self._locks.setdefault(endpoint, asyncio.Lock())
        async with lock:
            for _ in range(_ATTEMPTS):
                before = self.traffic.routes.get(endpoint)
                if if_match is not None and not _matches(if_match, before):
                    current = "none" if before is None else f'"{before.revision}"'
                    raise RevisionMismatchError(
                        f"route {endpoint!r} is at revision {current}, not {if_match}"
                    )
                route = make(before)
                route = route.model_copy(
                    update={"revision": (before.revision if before else 0) + 1}
                )
                change = self._describe_change(route, before, actor, reason)
                if await self._commit(change) == "applied":
                    return change
                if if_match is not None:
                    raise RevisionMismatchError(
                        f"route {endpoint!r} was changed by another replica meanwhile"
                    )
            raise RouteConflictError(
                f"route {endpoint!r}: other changes kept coming first; try again"
            )

    def _describe_change(
        self, route: Route, before: Route | None, actor: str, reason: str
    ) -> dict[str, Any]:
        return {
            "id": uuid.uuid4().hex,
            "time": time.time(),
            "actor": actor,
            "reason": reason,
            "origin": self._replica_id,
            "endpoint": route.endpoint,
            "base_revision": before.revision if before is not None else 0,
            "before": before.model_dump(mode="json") if before is not None else None,
            "after": route.model_dump(mode="json"),
        }

    async def _commit(self, change: dict[str, Any]) -> Outcome:
        """Prepare the change's models, check the audit log, then apply it here (no control
        topic) or publish it and wait until this replica has applied it."""
        route = Route.model_validate(change["after"])
        manager = self.traffic.manager
        prepared: list[tuple[str, str]] = []
        try:
            for variant in route.variants:  # nothing moves until every model of it serves
                await manager.prepare(route.endpoint, variant.name, variant.ref)
                prepared.append((variant.name, variant.ref))
            await self.traffic.prepare_shadows(route)
            await asyncio.to_thread(self.audit.check)
            if self._channel is None:
                outcome = await self._apply(change)
                if outcome == "applied":
                    error = await self._audit(change)
                    if error is not None:
                        change["audit_error"] = error
                return outcome
            return await self._publish(change)
        finally:
            for name, ref in prepared:  # what the change did not take up (it failed)
                manager.discard(route.endpoint, name, ref)
            await self.traffic.discard_shadows(route)

    async def _publish(self, change: dict[str, Any]) -> Outcome:
        assert self._channel is not None
        waiter: asyncio.Future[tuple[Outcome, str | None]]
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[change["id"]] = waiter
        self._mine[change["id"]] = None
        try:
            try:
                await self._channel.publish(change)
            except (KafkaError, OSError, TimeoutError) as exc:
                self._mine.pop(change["id"], None)
                raise ControlUnavailableError(
                    f"the control topic did not take the change ({type(exc).__name__}: {exc}); "
                    "nothing changed", retry_after_s=5.0,
                ) from exc  # fmt: skip
            try:
                async with asyncio.timeout(self._apply_timeout_s):
                    outcome, audit_error = await waiter
            except TimeoutError as exc:
                raise NotReadyError(
                    "the change is on the control topic but this replica has not read it back "
                    f"within {self._apply_timeout_s:g} s; it applies when it does",
                    retry_after_s=5.0,
                ) from exc
            if audit_error is not None:
                change["audit_error"] = audit_error
            return outcome
        finally:
            self._waiting.pop(change["id"], None)

    async def _on_event(self, change: dict[str, Any]) -> None:
        outcome: Outcome = "conflict"
        error: str | None = None
        # a worker that (re)starts is handed each endpoint's latest change by the supervisor,
        # which keeps no older ones: it takes it up from whatever revision it is at
        catch_up = change.pop("catch_up", False) is True
        try:
            outcome = await self._apply(change, catch_up)
            # the proposer may be gone (a canary's step cancels its controller): audit here
            if outcome == "applied" and change.get("id") in self._mine:
                error = await self._audit(change)
        finally:
            self._mine.pop(change.get("id", ""), None)
            waiter = self._waiting.get(change.get("id", ""))
            if waiter is not None and not waiter.done():
                waiter.set_result((outcome, error))

    async def _apply(self, change: dict[str, Any], catch_up: bool = False) -> Outcome:
        route = Route.model_validate(change["after"])
        current = self.revision(route.endpoint)
        stale = (route.revision <= current) if catch_up else change["base_revision"] != current
        if stale:
            self._metrics.route_conflicts.labels(route.endpoint).inc()
            log.info("route %s: change %s made on revision %s, now %s: skipped",
                     route.endpoint, change.get("id"), change["base_revision"],
                     self.revision(route.endpoint))  # fmt: skip
            return "conflict"
        before = self.traffic.routes.get(route.endpoint)
        await self.traffic.apply(route, required=False)
        self.audit.remember(change)
        self._metrics.route_changes.labels(route.endpoint, change["actor"]).inc()
        if change["actor"] == "canary" and route.canary is not None:
            event = _canary_event(before, route)
            self._metrics.canary_events.labels(route.endpoint, route.canary.variant, event).inc()
        return "applied"

    async def _audit(self, change: dict[str, Any]) -> str | None:
        """Write a change this process made. It applied already, so a failure (the log was
        writable a moment before) is logged, counted and returned, for the answer to say."""
        try:
            await asyncio.to_thread(self.audit.write, change)
        except OSError as exc:
            self._metrics.audit_failures.inc()
            log.error("route %s: change %s applied but not audited: %s",
                      change["endpoint"], change["id"], exc)  # fmt: skip
            return f"applied, but the audit log could not be written: {exc}"
        return None


def _canary_event(before: Route | None, after: Route) -> str:
    """What a canary's change did: ``step``, ``promoted``, ``rolled_back``, ``taken_over``
    (another replica became its owner) or ``held`` (its owner said why the due step waits)."""
    rule = after.canary
    assert rule is not None
    was = before.canary if before is not None else None
    if was is None or was.state != rule.state:
        return "step" if rule.state.startswith("step") else rule.state
    return "taken_over" if was.owner != rule.owner else "held"


def _matches(if_match: str, route: Route | None) -> bool:
    """Whether an If-Match value names the route's revision (``*``: any existing route)."""
    if if_match.strip() == "*":
        return route is not None
    revision = route.revision if route is not None else 0
    tags = [tag.strip() for tag in if_match.split(",")]
    return f'"{revision}"' in tags
