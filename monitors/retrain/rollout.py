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
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from registry_client import InvalidReferenceError, ModelRef, Registry

__all__ = ["RolloutError", "RolloutOutcome", "RolloutSettings", "roll_out"]

log = logging.getLogger(__name__)

EventFn = Callable[[str, dict[str, Any]], None]
_RETRY_STATUSES = frozenset({502, 503, 504})
_HISTORY_LIMIT = 200
_CONFLICT_ATTEMPTS = 20
_FINISH_GRACE_S = 60.0  # for the last route change and alias moves once the deadline passed


class RolloutError(Exception):
    """The rollout cannot be driven: the gateway refuses the token or the change, the route is
    not as the rollout needs it, the gateway answers in a shape the rollout cannot read, or it
    stayed out of reach past the deadline."""


@dataclass(frozen=True)
class RolloutSettings:
    """Where the gateway's admin API is, and how the canary ramps and is judged.

    ``steps``...``min_p99_increase_s`` are the gateway's canary rule (README, Traffic
    management); ``quality_monitor_url`` adds its quality gate (realized accuracy from the
    monitor's A/B verdict, within ``quality_margin`` of the champion). ``timeout_s`` bounds
    the whole rollout, ``swap_timeout_s`` the wait for the champion variant to load the new
    version after promotion (the gateway polls aliases every ``registry.poll_interval_s``).
    """

    admin_url: str
    admin_token: str = field(repr=False)
    steps: tuple[int, ...] = (5, 25, 50, 100)
    interval_s: float = 60.0
    window_s: float = 60.0
    min_requests: int = 50
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    min_p99_increase_s: float = 0.005
    quality_monitor_url: str | None = None
    quality_margin: float = 0.01
    timeout_s: float = 3600.0
    swap_timeout_s: float = 300.0
    poll_interval_s: float = 1.0
    request_timeout_s: float = 10.0
    champion_alias: str = "champion"
    candidate_alias: str = "candidate"
    candidate_variant: str = "candidate"

    def __post_init__(self) -> None:
        problems = []
        if not self.admin_url.startswith(("http://", "https://")):
            problems.append(f"admin_url {self.admin_url!r} must start with http:// or https://")
        if not self.admin_token:
            problems.append("admin_token is empty")
        steps = list(self.steps)
        if not steps or steps != sorted(steps) or any(not 0 < s <= 100 for s in steps):
            problems.append(f"steps {steps} must be increasing percentages in (0, 100]")
        for name in ("interval_s", "window_s", "timeout_s", "swap_timeout_s", "poll_interval_s",
                     "request_timeout_s", "max_p99_ratio"):  # fmt: skip
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        if self.min_requests < 1:
            problems.append("min_requests must be at least 1")
        if not 0 <= self.quality_margin <= 1:
            problems.append("quality_margin must be between 0 and 1")
        for name in ("champion_alias", "candidate_alias"):
            try:
                ModelRef.parse(f"model@{getattr(self, name)}")
            except InvalidReferenceError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise ValueError("rollout settings: " + "; ".join(problems))

    def canary_rule(self, baseline: str) -> dict[str, Any]:
        """The gateway's canary rule ramping the candidate variant against ``baseline``."""
        rule: dict[str, Any] = {
            "variant": self.candidate_variant,
            "baseline": baseline,
            "steps": list(self.steps),
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "min_requests": self.min_requests,
            "max_error_rate_increase": self.max_error_rate_increase,
            "max_p99_ratio": self.max_p99_ratio,
            "min_p99_increase_s": self.min_p99_increase_s,
        }
        if self.quality_monitor_url is not None:
            rule["quality"] = {"monitor_url": self.quality_monitor_url,
                               "margin": self.quality_margin}  # fmt: skip
        return rule


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
        self._client = httpx.AsyncClient(
            base_url=settings.admin_url.rstrip("/"),
            headers={"authorization": f"Bearer {settings.admin_token}"},
            timeout=settings.request_timeout_s,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- the course of a rollout --------------------------------------------------------------

    async def run(self) -> RolloutOutcome:
        for _ in range(_CONFLICT_ATTEMPTS):
            route = await self._route(self.deadline)
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
        stale = _variant(route, self.settings.candidate_variant)
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
        body = _without(route, self.settings.candidate_variant, baseline)
        body["variants"].append(
            {"name": self.settings.candidate_variant, "ref": str(self.candidate_ref), "weight": 0}
        )
        body["canary"] = self.settings.canary_rule(baseline)
        response = await self._put(body, route["revision"], self.deadline)
        if response.status_code == 412:
            return False
        if response.status_code == 409:
            reason = f"the gateway could not load {self.candidate_ref}: {_error(response)}"
            self._event("rolled_back", reason=reason)
            return RolloutOutcome("rolled_back", reason, self.timeline)
        _check(response, f"starting the canary of {self.candidate_ref}")
        await self._read_history(self.deadline)
        return True

    async def _watch(self) -> RolloutOutcome:
        while time.monotonic() < self.deadline:
            route = await self._route(self.deadline)
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
        while not await self._serves(baseline, self.candidate, until):
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
            route = await self._route(until)
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
            body = _without(route, self.settings.candidate_variant, baseline)
            body["canary"] = None
            response = await self._put(body, route["revision"], until)
            if response.status_code != 412:
                what = f"removing {self.candidate_ref} from route {self.endpoint!r}"
                _check(response, what)
                if reason is not None:
                    self._event("rolled_back", reason=reason)
                self._event("route_restored", variants=_weights(_changed_route(response, what)))
                return True
            if reason is not None:
                return False
            route = await self._route(until)
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
        for change in reversed(await self._history(self.deadline)):
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
            f"someone else; the route is left as it is: {_weights(route)}"
        )
        self._event("rolled_back", reason=reason)
        return RolloutOutcome("rolled_back", reason, self.timeline)

    # -- reading the route --------------------------------------------------------------------

    def _is_mine(self, route: dict[str, Any]) -> bool:
        """The route runs (or ran) this candidate's canary."""
        variant = _variant(route, self.settings.candidate_variant)
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
        variant = _variant(route, self.settings.candidate_variant)
        return int(variant["weight"]) if variant is not None else 0

    async def _read_history(self, until: float) -> None:
        """Add the gateway's changes of this canary to the timeline."""
        for change in await self._history(until):
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

    # -- the gateway's API --------------------------------------------------------------------

    async def _route(self, until: float) -> dict[str, Any]:
        response = await self._call("GET", f"/admin/routes/{self.endpoint}", until)
        what = f"route {self.endpoint!r}"
        _check(response, what)
        route = _json(response, what)
        problem = _route_problem(route) or _revision_problem(route)
        if problem is not None or not isinstance(route, dict):
            raise _unexpected(response, what, str(problem))
        return route

    async def _history(self, until: float) -> list[dict[str, Any]]:
        response = await self._call(
            "GET", f"/admin/history?endpoint={self.endpoint}&limit={_HISTORY_LIMIT}", until
        )
        what = f"history of {self.endpoint!r}"
        _check(response, what)
        answer = _json(response, what)
        changes = answer.get("changes") if isinstance(answer, dict) else None
        if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
            raise _unexpected(response, what, "has no list of objects 'changes'")
        for number, change in enumerate(changes):
            problem = _change_problem(change)
            if problem is not None:
                raise _unexpected(response, what, f"changes[{number}] {problem}")
        return changes

    async def _put(self, body: dict[str, Any], revision: int, until: float) -> httpx.Response:
        return await self._call(
            "PUT", f"/admin/routes/{self.endpoint}", until, body, {"if-match": f'"{revision}"'}
        )

    async def _serves(self, variant: str, version: str, until: float) -> bool:
        """The gateway's ``variant`` of the endpoint serves ``version`` now."""
        response = await self._call("GET", "/metrics", until)
        what = "the gateway's metrics"
        _check(response, what)
        try:
            for family in text_string_to_metric_families(response.text):
                if family.name != "gateway_model_loaded":
                    continue
                for sample in family.samples:
                    labels = sample.labels
                    if (labels.get("model"), labels.get("variant"), labels.get("version")) == (
                        self.endpoint, variant, version
                    ) and sample.value == 1:  # fmt: skip
                        return True
        except ValueError as exc:
            raise _unexpected(response, what, f"is not Prometheus text ({exc})") from exc
        return False

    async def _call(
        self,
        method: str,
        path: str,
        until: float,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One admin call, tried again on connection errors and 502/503/504 until ``until``."""
        backoff_s = 0.2
        while True:
            try:
                response = await self._client.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:
                problem = repr(exc)
            else:
                if response.status_code not in _RETRY_STATUSES:
                    return response
                problem = f"{response.status_code} {_error(response)}"
            if time.monotonic() + backoff_s > until:
                raise RolloutError(
                    f"the gateway at {self.settings.admin_url} stayed out of reach "
                    f"({method} {path}: {problem})"
                )
            log.warning("rollout: %s %s: %s; trying again", method, path, problem)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 5.0)


def _variant(route: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((v for v in route.get("variants", []) if v.get("name") == name), None)


def _weights(route: dict[str, Any]) -> dict[str, int]:
    return {str(v["name"]): int(v["weight"]) for v in route.get("variants", [])}


def _without(route: dict[str, Any], name: str, heir: str) -> dict[str, Any]:
    """The route as a PUT body without variant ``name``, its weight given to ``heir``."""
    gone = _variant(route, name)
    share = int(gone["weight"]) if gone is not None else 0
    variants = [
        {"name": v["name"], "ref": v["ref"],
         "weight": int(v["weight"]) + (share if v["name"] == heir else 0)}
        for v in route["variants"] if v["name"] != name
    ]  # fmt: skip
    return {
        "variants": variants,
        "shadows": route.get("shadows", []),
        "allow_pinning": route.get("allow_pinning", False),
        "canary": route.get("canary"),
    }


def _parses_to(ref: str, expected: ModelRef) -> bool:
    try:
        return ModelRef.parse(ref) == expected
    except InvalidReferenceError:
        return False


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code in (401, 403):
        raise RolloutError(f"the gateway refused the rollout's admin token: {_error(response)}")
    if response.status_code >= 400:
        raise RolloutError(
            f"{what}: the gateway answered {response.status_code} {_error(response)}"
        )


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:  # not JSON, or not UTF-8
        raise _unexpected(response, what, "is not JSON") from exc


def _unexpected(response: httpx.Response, what: str, problem: str) -> RolloutError:
    return RolloutError(
        f"{what}: the gateway's answer ({response.status_code}) {problem}: {response.text[:200]!r}"
    )


def _changed_route(response: httpx.Response, what: str) -> dict[str, Any]:
    """The route after a change, from the gateway's answer to the change."""
    answer = _json(response, what)
    after = answer.get("after") if isinstance(answer, dict) else None
    if not isinstance(after, dict):
        raise _unexpected(response, what, "has no object 'after'")
    problem = _route_problem(after)
    if problem is not None:
        raise _unexpected(response, what, f"'after' {problem}")
    return after


def _change_problem(change: dict[str, Any]) -> str | None:
    """What a change in the gateway's history lacks of what the rollout reads, or None."""
    if not _is_number(change.get("time")):
        return "has no number 'time'"
    for side in ("before", "after"):
        if change.get(side) is not None:
            problem = _route_problem(change[side])
            if problem is not None:
                return f"'{side}' {problem}"
    return None


def _route_problem(route: object) -> str | None:
    """What a route from the gateway lacks of what the rollout reads, or None."""
    if not isinstance(route, dict):
        return "is not a JSON object"
    variants = route.get("variants")
    if not isinstance(variants, list):
        return "has no list 'variants'"
    for number, variant in enumerate(variants):
        if not isinstance(variant, dict):
            return f"has variants[{number}] that is not an object"
        for key, kind in (("name", str), ("ref", str), ("weight", int)):
            value = variant.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                return f"has variants[{number}] without {kind.__name__} {key!r}"
    canary = route.get("canary")
    if canary is None:
        return None
    if not isinstance(canary, dict):
        return "has a 'canary' that is not an object"
    for key in ("variant", "baseline", "state"):
        if not isinstance(canary.get(key), str):
            return f"has a 'canary' without str {key!r}"
    return None


def _revision_problem(route: dict[str, Any]) -> str | None:
    revision = route.get("revision")
    if isinstance(revision, int) and not isinstance(revision, bool):
        return None
    return "has no int 'revision'"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text[:300]))
    except (ValueError, AttributeError):
        return response.text[:300]
