"""Route changes: validated, loaded before traffic moves, audited, and shared with replicas."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.errors import GatewayError, InvalidInputError, UnknownModelError
from gateway.metrics import GatewayMetrics
from gateway.traffic.control import RouteChannel
from gateway.traffic.router import Traffic
from gateway.traffic.routes import Route

__all__ = ["AuditLog", "RouteStore"]

log = logging.getLogger(__name__)


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

    def write(self, change: dict[str, Any]) -> None:
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
        self._waiting: dict[str, asyncio.Future[None]] = {}
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

    def parse(self, endpoint: str, data: dict[str, Any]) -> Route:
        """A route from an operator's JSON; ``endpoint`` comes from the URL."""
        try:
            return Route.model_validate({**data, "endpoint": endpoint})
        except ValidationError as exc:
            raise InvalidInputError(_describe(exc)) from exc

    def patch(self, endpoint: str, data: dict[str, Any], actor: str) -> Route:
        """Apply a partial change (``weights``, ``shadows``, ``canary``, ``allow_pinning``)."""
        current = self.traffic.routes.get(endpoint)
        if current is None:
            raise UnknownModelError(f"no route {endpoint!r}")
        unknown = set(data) - {"weights", "shadows", "canary", "allow_pinning"}
        if unknown:
            raise InvalidInputError(f"cannot patch {sorted(unknown)}; use PUT for a whole route")
        changes: dict[str, Any] = {k: v for k, v in data.items() if k != "weights"}
        if isinstance(changes.get("canary"), dict):
            changes["canary"] = {**changes["canary"], "state": "pending", "owner": self._replica_id}
        weights = data.get("weights", {})
        if not isinstance(weights, dict):
            raise InvalidInputError("'weights' must map variant names to percentages")
        try:
            return current.with_weights(weights, **changes)
        except (ValidationError, ValueError, TypeError) as exc:
            message = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
            raise InvalidInputError(message) from exc

    async def propose(self, route: Route, actor: str, reason: str = "") -> dict[str, Any]:
        """Load what the route needs, then apply it here and on every replica."""
        before = self.traffic.routes.get(route.endpoint)
        for variant in route.variants:  # nothing moves until every model of the route serves
            await self.traffic.manager.ensure(
                route.endpoint, variant.name, variant.ref, required=True
            )
        change_id = uuid.uuid4().hex
        change: dict[str, Any] = {
            "id": change_id,
            "time": time.time(),
            "actor": actor,
            "reason": reason,
            "origin": self._replica_id,
            "endpoint": route.endpoint,
            "before": before.model_dump(mode="json") if before is not None else None,
            "after": route.model_dump(mode="json"),
        }
        if self._channel is None:
            await self._apply(change)
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[change_id] = waiter
            try:
                await self._channel.publish(change)
                async with asyncio.timeout(self._apply_timeout_s):
                    await waiter
            except (TimeoutError, OSError) as exc:
                raise GatewayError(
                    f"route change not confirmed by the control topic: {exc}"
                ) from exc
            finally:
                self._waiting.pop(change_id, None)
        await asyncio.to_thread(self.audit.write, change)
        return change

    async def _on_event(self, change: dict[str, Any]) -> None:
        try:
            await self._apply(change)
        finally:
            waiter = self._waiting.get(change.get("id", ""))
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _apply(self, change: dict[str, Any]) -> None:
        route = Route.model_validate(change["after"])
        await self.traffic.apply(route, required=False)
        self.audit.remember(change)
        self._metrics.route_changes.labels(route.endpoint, change["actor"]).inc()
        if change["actor"] == "canary" and route.canary is not None:
            event = "step" if route.canary.state.startswith("step") else route.canary.state
            self._metrics.canary_events.labels(route.endpoint, route.canary.variant, event).inc()


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'route'}: {err['msg']}" for err in exc.errors()
    )
