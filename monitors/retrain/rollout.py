"""Roll a registered candidate out through the gateway's canary, and move the registry's aliases.

``roll_out`` points the ``candidate`` alias at the new version, adds it to the endpoint's route
as a variant pinned to that version (``<model>/<version>``) at weight 0 with a canary rule
against the variant that serves ``<model>@champion``, and follows the canary step by step on
the admin API (``/admin/routes/{endpoint}``, ``/admin/history``). The gateway drives the ramp
and rolls back by itself on a breach; this side only starts it, watches it and finishes it:

- promoted: the ``champion`` alias moves to the candidate; once the champion variant serves
  the new version (``gateway_model_loaded`` on ``/metrics``), the route drops the candidate
  variant and gives its share back to the champion variant, so the endpoint ends as it began,
  serving the new champion;
- rolled back by the gateway: the reason is the canary's own (``rolled back candidate: error
  rate ...``), and the candidate variant is removed;
- not finished within ``timeout_s``: rolled back here, explicitly, in one route change.

Every route change names the revision it was made from (``If-Match``), so a step the canary
takes meanwhile is never overwritten. Called again for the same candidate (a worker restarted
mid-rollout), it finds the canary in the route and watches or finishes it instead of starting
over; a candidate already promoted or rolled back gives that outcome again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from monitors.retrain._gateway_admin import (
    GatewayAdmin,
    RolloutError,
    changed_route,
    check,
    error,
    find_variant,
    weights,
    without,
)
from monitors.retrain._rollout_settings import RolloutSettings
from registry_client import InvalidReferenceError, ModelRef, Registry

__all__ = ["RolloutError", "RolloutOutcome", "RolloutSettings", "roll_out"]

log = logging.getLogger(__name__)

EventFn = Callable[[str, dict[str, Any]], None]
_CONFLICT_ATTEMPTS = 20
_FINISH_GRACE_S = 60.0  # for the last route change and alias moves once the deadline passed


@dataclass(frozen=True)
class RolloutOutcome:
    """How a rollout ended; ``timeline`` holds each step with its time (unix seconds)."""

    state: Literal["promoted", "rolled_back"]
    reason: str
    timeline: list[dict[str, Any]]


async def roll_out(
    registry: Registry,
    settings: RolloutSettings,
    *,
    model: str,
    endpoint: str,
    champion: str,
    candidate: str,
    on_event: EventFn | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RolloutOutcome:
    """Canary ``model`` version ``candidate`` against ``champion`` on ``endpoint``; promote or
    roll back (see the module's description). ``on_event(kind, entry)`` hears each timeline
    entry as it happens: ``candidate_alias``, ``canary_started``, ``resumed``, ``step``,
    ``promoted``, ``rolled_back``, ``champion_alias``, ``champion_serving``, ``route_restored``.
    ``transport`` replaces httpx's for the admin calls (a test's fake gateway). Raises
    RolloutError when it cannot drive the rollout, the gateway's answers of another shape
    included."""
    rollout = _Rollout(
        registry, settings, model, endpoint, champion, candidate, on_event, transport
    )
    try:
        return await rollout.run()
    finally:
        await rollout.aclose()


class _Rollout:
    def __init__(
        self,
        registry: Registry,
        settings: RolloutSettings,
        model: str,
        endpoint: str,
        champion: str,
        candidate: str,
        on_event: EventFn | None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.model = model
        self.endpoint = endpoint
        self.champion = champion
        self.candidate = candidate
        self.candidate_ref = ModelRef(model, version=candidate)
        self.champion_ref = ModelRef(model, alias=settings.champion_alias)
        self.on_event = on_event
        self.timeline: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + settings.timeout_s
        self._seen: set[str] = set()  # ids of the gateway's changes already in the timeline
        self._admin = GatewayAdmin(
            settings.admin_url, settings.admin_token, settings.request_timeout_s, transport
        )

    async def aclose(self) -> None:
        await self._admin.aclose()

    # -- the course of a rollout --------------------------------------------------------------

    async def run(self) -> RolloutOutcome:
        for _ in range(_CONFLICT_ATTEMPTS):
            route = await self._admin.route(self.endpoint, self.deadline)
            if self._is_mine(route):
                await self._read_history(self.deadline)
                state = route["canary"]["state"]
                if state == "promoted":
                    return await self._promote(route)
                if state == "rolled_back":
                    return await self._rolled_back(route)
                self._event("resumed", state=state, percent=self._percent(route))
                return await self._watch()
            earlier = await self._earlier_outcome(route)
            if earlier is not None:
                return earlier
            started = await self._start(route)
            if isinstance(started, RolloutOutcome):
                return started
            if started:
                return await self._watch()
        raise RolloutError(f"route {self.endpoint!r} kept changing while the canary was set up")

    async def _start(self, route: dict[str, Any]) -> bool | RolloutOutcome:
        """Add the candidate variant and the canary rule; False when the route changed first."""
        canary = route.get("canary")
        stale = find_variant(route, self.settings.candidate_variant)
        if stale is not None and canary and canary.get("state", "").startswith(("pending", "step")):
            raise RolloutError(
                f"endpoint {self.endpoint!r} has a canary of {stale['ref']} in progress "
                f"({canary['state']}); it must finish before {self.candidate_ref} starts"
            )
        baseline = self._champion_variant(route)
        aliases = await self.registry.get_aliases(self.model)
        if aliases.get(self.settings.champion_alias) != self.champion:
            raise RolloutError(
                f"{self.champion_ref} is version {aliases.get(self.settings.champion_alias)}, "
                f"not the champion {self.champion} this rollout replaces"
            )
        if aliases.get(self.settings.candidate_alias) != self.candidate:
            await self.registry.set_alias(self.model, self.settings.candidate_alias, self.candidate)
            self._event("candidate_alias", version=self.candidate)
        body = without(route, self.settings.candidate_variant, baseline)
        body["variants"].append(
            {"name": self.settings.candidate_variant, "ref": str(self.candidate_ref), "weight": 0}
        )
        body["canary"] = self.settings.canary_rule(baseline)
        response = await self._admin.put_route(
            self.endpoint, body, route["revision"], self.deadline
        )
        if response.status_code == 412:
            return False
        if response.status_code == 409:
            reason = f"the gateway could not load {self.candidate_ref}: {error(response)}"
            self._event("rolled_back", reason=reason)
            return RolloutOutcome("rolled_back", reason, self.timeline)
        check(response, f"starting the canary of {self.candidate_ref}")
        await self._read_history(self.deadline)
        return True

    async def _watch(self) -> RolloutOutcome:
        while time.monotonic() < self.deadline:
            route = await self._admin.route(self.endpoint, self.deadline)
            await self._read_history(self.deadline)
            if not self._is_mine(route):
                return self._taken_away(route)
            state = route["canary"]["state"]
            if state == "promoted":
                return await self._promote(route)
            if state == "rolled_back":
                return await self._rolled_back(route)
            await asyncio.sleep(self.settings.poll_interval_s)
        return await self._time_out()

    async def _promote(self, route: dict[str, Any]) -> RolloutOutcome:
        until = max(self.deadline, time.monotonic() + _FINISH_GRACE_S)
        reason = self._gateway_reason("promoted") or f"promoted {self.settings.candidate_variant}"
        if not any(e["event"] == "promoted" for e in self.timeline):
            self._event("promoted", reason=reason)
        await self.registry.set_alias(self.model, self.settings.champion_alias, self.candidate)
        self._event("champion_alias", version=self.candidate)
        baseline = route["canary"]["baseline"]
        swap_deadline = time.monotonic() + self.settings.swap_timeout_s
        while not await self._admin.serves(self.endpoint, baseline, self.candidate, until):
            if time.monotonic() > swap_deadline:
                return RolloutOutcome(
                    "promoted",
                    f"{reason}; variant {baseline!r} did not load version {self.candidate} "
                    f"within {self.settings.swap_timeout_s:g} s, so the route still serves it "
                    f"through variant {self.settings.candidate_variant!r}",
                    self.timeline,
                )
            await asyncio.sleep(self.settings.poll_interval_s)
        self._event("champion_serving", variant=baseline, version=self.candidate)
        await self._restore(route, baseline, until)
        return RolloutOutcome("promoted", reason, self.timeline)

    async def _rolled_back(self, route: dict[str, Any]) -> RolloutOutcome:
        until = max(self.deadline, time.monotonic() + _FINISH_GRACE_S)
        reason = self._gateway_reason("rolled_back") or "rolled back by the gateway's canary"
        if not any(e["event"] == "rolled_back" for e in self.timeline):
            self._event("rolled_back", reason=reason)
        await self._restore(route, route["canary"]["baseline"], until)
        return RolloutOutcome("rolled_back", reason, self.timeline)

    async def _time_out(self) -> RolloutOutcome:
        until = time.monotonic() + _FINISH_GRACE_S
        for _ in range(_CONFLICT_ATTEMPTS):
            route = await self._admin.route(self.endpoint, until)
            await self._read_history(until)
            if not self._is_mine(route):
                return self._taken_away(route)
            state = route["canary"]["state"]
            if state == "promoted":  # it finished while the deadline passed
                return await self._promote(route)
            if state == "rolled_back":
                return await self._rolled_back(route)
            reason = (
                f"the canary did not finish within {self.settings.timeout_s:g} s (at {state}, "
                f"{self._percent(route)}% of traffic); rolled back by the rollout"
            )
            if await self._restore(route, route["canary"]["baseline"], until, reason=reason):
                return RolloutOutcome("rolled_back", reason, self.timeline)
        raise RolloutError(f"route {self.endpoint!r} kept changing while rolling back")

    async def _restore(
        self, route: dict[str, Any], baseline: str, until: float, reason: str | None = None
    ) -> bool:
        """Drop the candidate variant (its share to ``baseline``) and the canary rule, on the
        route's latest revision; False when it changed first and ``reason`` (a rollback of a
        running canary) says the change must not be made on another state."""
        for _ in range(_CONFLICT_ATTEMPTS):
            body = without(route, self.settings.candidate_variant, baseline)
            body["canary"] = None
            response = await self._admin.put_route(self.endpoint, body, route["revision"], until)
            if response.status_code != 412:
                what = f"removing {self.candidate_ref} from route {self.endpoint!r}"
                check(response, what)
                if reason is not None:
                    self._event("rolled_back", reason=reason)
                self._event("route_restored", variants=weights(changed_route(response, what)))
                return True
            if reason is not None:
                return False
            route = await self._admin.route(self.endpoint, until)
            if not self._is_mine(route):
                return True  # someone else already took it out
        raise RolloutError(f"route {self.endpoint!r} kept changing while the canary was removed")

    async def _earlier_outcome(self, route: dict[str, Any]) -> RolloutOutcome | None:
        """The outcome of this candidate's rollout when an earlier call finished it."""
        aliases = await self.registry.get_aliases(self.model)
        if aliases.get(self.settings.champion_alias) == self.candidate:
            return RolloutOutcome(
                "promoted", f"version {self.candidate} is already {self.champion_ref}", []
            )
        for change in reversed(await self._admin.history(self.endpoint, self.deadline)):
            before, after = change.get("before") or {}, change.get("after") or {}
            if change.get("actor") == "canary" and self._is_mine(after):
                if after["canary"].get("state") == "rolled_back":
                    return RolloutOutcome("rolled_back", str(change.get("reason")), [])
            elif self._is_mine(before) and not self._is_mine(after):
                state = str(before["canary"].get("state"))
                if state.startswith(("pending", "step")):  # stopped, not cleaned up after
                    reason = (
                        f"the canary of {self.candidate_ref} was stopped at {state} by "
                        f"{change.get('actor')} (the rollout's timeout or an operator)"
                    )
                    return RolloutOutcome("rolled_back", reason, [])
        return None

    def _taken_away(self, route: dict[str, Any]) -> RolloutOutcome:
        reason = (
            f"the canary of {self.candidate_ref} was removed from route {self.endpoint!r} by "
            f"someone else; the route is left as it is: {weights(route)}"
        )
        self._event("rolled_back", reason=reason)
        return RolloutOutcome("rolled_back", reason, self.timeline)

    # -- reading the route --------------------------------------------------------------------

    def _is_mine(self, route: dict[str, Any]) -> bool:
        """The route runs (or ran) this candidate's canary."""
        variant = find_variant(route, self.settings.candidate_variant)
        canary = route.get("canary")
        return (
            variant is not None
            and _parses_to(variant["ref"], self.candidate_ref)
            and isinstance(canary, dict)
            and canary.get("variant") == self.settings.candidate_variant
        )

    def _champion_variant(self, route: dict[str, Any]) -> str:
        for variant in route["variants"]:
            if _parses_to(variant["ref"], self.champion_ref):
                return str(variant["name"])
        raise RolloutError(
            f"route {self.endpoint!r} has no variant serving {self.champion_ref}: "
            f"{[(v['name'], v['ref']) for v in route['variants']]}"
        )

    def _percent(self, route: dict[str, Any]) -> int:
        variant = find_variant(route, self.settings.candidate_variant)
        return int(variant["weight"]) if variant is not None else 0

    async def _read_history(self, until: float) -> None:
        """Add the gateway's changes of this canary to the timeline."""
        for change in await self._admin.history(self.endpoint, until):
            after = change.get("after") or {}
            if change.get("id") in self._seen or not self._is_mine(after):
                continue
            self._seen.add(str(change.get("id")))
            state = str(after["canary"].get("state"))
            kind = {"pending": "canary_started", "promoted": "promoted"}.get(state, state)
            kind = "step" if state.startswith("step") else kind
            self._event(kind, at=float(change["time"]), state=state,
                        percent=self._percent(after), reason=change.get("reason"),
                        actor=change.get("actor"))  # fmt: skip

    def _gateway_reason(self, kind: str) -> str | None:
        for entry in reversed(self.timeline):
            if entry["event"] == kind and entry.get("actor") == "canary":
                return str(entry["reason"])
        return None

    def _event(self, kind: str, at: float | None = None, **details: Any) -> None:
        entry = {"event": kind, "time": time.time() if at is None else at, **details}
        self.timeline.append(entry)
        log.info("rollout %s/%s on %s: %s %s", self.model, self.candidate, self.endpoint, kind,
                 details.get("reason") or details.get("percent", ""))  # fmt: skip
        if self.on_event is not None:
            self.on_event(kind, entry)


def _parses_to(ref: str, expected: ModelRef) -> bool:
    try:
        return ModelRef.parse(ref) == expected
    except InvalidReferenceError:
        return False
