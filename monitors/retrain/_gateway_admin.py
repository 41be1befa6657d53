"""The gateway's admin API as a rollout drives it: each call tried again while the gateway is
out of reach (connection errors, 502/503/504) until a deadline, and each answer checked for the
shape the rollout reads (a route, the history of changes, the metrics) before it is read, so an
answer of another shape is a ``RolloutError`` naming what is missing rather than a ``KeyError``
deep in the rollout; and the route read and written as the gateway's route format (a variant by
name, the weights, the route as a PUT body without a variant).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "GatewayAdmin",
    "RolloutError",
    "changed_route",
    "check",
    "error",
    "find_variant",
    "weights",
    "without",
]

# the rollout's logger: its lines stay under the name they always had
log = logging.getLogger("monitors.retrain.rollout")

_RETRY_STATUSES = frozenset({502, 503, 504})
_HISTORY_LIMIT = 200


class RolloutError(Exception):
    """The rollout cannot be driven: the gateway refuses the token or the change, the route is
    not as the rollout needs it, the gateway answers in a shape the rollout cannot read, or it
    stayed out of reach past the deadline."""


class GatewayAdmin:
    """An admin client of the gateway at ``admin_url``, with the rollout's bearer token."""

    def __init__(
        self,
        admin_url: str,
        admin_token: str,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.admin_url = admin_url
        self._client = httpx.AsyncClient(
            base_url=admin_url.rstrip("/"),
            headers={"authorization": f"Bearer {admin_token}"},
            timeout=timeout_s,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def route(self, endpoint: str, until: float) -> dict[str, Any]:
        """The endpoint's route, with its revision."""
        response = await self._call("GET", f"/admin/routes/{endpoint}", until)
        what = f"route {endpoint!r}"
        check(response, what)
        route = _json(response, what)
        problem = _route_problem(route) or _revision_problem(route)
        if problem is not None or not isinstance(route, dict):
            raise _unexpected(response, what, str(problem))
        return route

    async def history(self, endpoint: str, until: float) -> list[dict[str, Any]]:
        """The latest changes of the endpoint's route, oldest first."""
        response = await self._call(
            "GET", f"/admin/history?endpoint={endpoint}&limit={_HISTORY_LIMIT}", until
        )
        what = f"history of {endpoint!r}"
        check(response, what)
        answer = _json(response, what)
        changes = answer.get("changes") if isinstance(answer, dict) else None
        if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
            raise _unexpected(response, what, "has no list of objects 'changes'")
        for number, change in enumerate(changes):
            problem = _change_problem(change)
            if problem is not None:
                raise _unexpected(response, what, f"changes[{number}] {problem}")
        return changes

    async def put_route(
        self, endpoint: str, body: dict[str, Any], revision: int, until: float
    ) -> httpx.Response:
        """Replace the endpoint's route if it is still at ``revision``; the answer unread."""
        return await self._call(
            "PUT", f"/admin/routes/{endpoint}", until, body, {"if-match": f'"{revision}"'}
        )

    async def serves(self, endpoint: str, variant: str, version: str, until: float) -> bool:
        """The gateway's ``variant`` of the endpoint serves ``version`` now."""
        response = await self._call("GET", "/metrics", until)
        what = "the gateway's metrics"
        check(response, what)
        try:
            for family in text_string_to_metric_families(response.text):
                if family.name != "gateway_model_loaded":
                    continue
                for sample in family.samples:
                    labels = sample.labels
                    if (labels.get("model"), labels.get("variant"), labels.get("version")) == (
                        endpoint, variant, version
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
                problem = f"{response.status_code} {error(response)}"
            if time.monotonic() + backoff_s > until:
                raise RolloutError(
                    f"the gateway at {self.admin_url} stayed out of reach "
                    f"({method} {path}: {problem})"
                )
            log.warning("rollout: %s %s: %s; trying again", method, path, problem)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 5.0)


def find_variant(route: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The route's variant called ``name``, or None."""
    return next((v for v in route.get("variants", []) if v.get("name") == name), None)


def weights(route: dict[str, Any]) -> dict[str, int]:
    """The route's weight per variant."""
    return {str(v["name"]): int(v["weight"]) for v in route.get("variants", [])}


def without(route: dict[str, Any], name: str, heir: str) -> dict[str, Any]:
    """The route as a PUT body without variant ``name``, its weight given to ``heir``."""
    gone = find_variant(route, name)
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


def check(response: httpx.Response, what: str) -> None:
    """Raise a RolloutError for an answer of 400 or more (``what``: what was asked for)."""
    if response.status_code in (401, 403):
        raise RolloutError(f"the gateway refused the rollout's admin token: {error(response)}")
    if response.status_code >= 400:
        raise RolloutError(f"{what}: the gateway answered {response.status_code} {error(response)}")


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:  # not JSON, or not UTF-8
        raise _unexpected(response, what, "is not JSON") from exc


def _unexpected(response: httpx.Response, what: str, problem: str) -> RolloutError:
    return RolloutError(
        f"{what}: the gateway's answer ({response.status_code}) {problem}: {response.text[:200]!r}"
    )


def changed_route(response: httpx.Response, what: str) -> dict[str, Any]:
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


def error(response: httpx.Response) -> str:
    """The ``error`` of the gateway's answer, else the start of its text."""
    try:
        return str(response.json().get("error", response.text[:300]))
    except (ValueError, AttributeError):
        return response.text[:300]
