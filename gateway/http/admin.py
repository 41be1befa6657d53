"""The operator API: read and change routes, with bearer-token authentication and an audit trail.

``GET /admin/routes``, ``GET/PUT/PATCH /admin/routes/{endpoint}``, ``GET /admin/history``.
With no token configured the API is disabled (403), never open.
"""

from __future__ import annotations

import hmac
from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from gateway.errors import GatewayError, InvalidInputError
from gateway.http.endpoints import AppState, json_response
from gateway.protocol._json import load_object
from gateway.traffic import RouteStore, follow

__all__ = ["AdminAuthError", "AdminDisabledError", "admin_routes"]


class AdminAuthError(GatewayError):
    """No bearer token, or a wrong one."""


class AdminDisabledError(GatewayError):
    """No admin token is configured, so the admin API is off."""


class _Admin:
    def __init__(self, state: AppState, tokens: dict[str, SecretStr]) -> None:
        self.state = state
        self._tokens = {name: token.get_secret_value().encode() for name, token in tokens.items()}

    def _actor(self, request: Request) -> str:
        if not self._tokens:
            raise AdminDisabledError("the admin API is disabled: no admin tokens are configured")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AdminAuthError("admin API: send 'Authorization: Bearer <token>'")
        given = token.strip().encode()
        for actor, expected in self._tokens.items():
            if hmac.compare_digest(given, expected):
                return actor
        raise AdminAuthError("admin API: the bearer token is not valid")

    def _store(self) -> RouteStore:
        store = self.state.route_store
        if store is None:
            raise GatewayError("the gateway is starting")
        return store

    async def _body(self, request: Request) -> dict[str, Any]:
        return load_object(await request.body())

    async def list_routes(self, request: Request) -> Response:
        self._actor(request)
        routes = self._store().traffic.routes
        return json_response({"routes": [r.model_dump(mode="json") for r in routes.values()]})

    async def get_route(self, request: Request) -> Response:
        self._actor(request)
        route = self._store().traffic.route(request.path_params["endpoint"])
        return json_response(route.model_dump(mode="json"))

    async def put_route(self, request: Request) -> Response:
        actor = self._actor(request)
        store = self._store()
        data = await self._body(request)
        data.pop("buckets", None)  # a new table is derived from the weights
        if isinstance(data.get("canary"), dict):
            data["canary"] = {
                **data["canary"],
                "state": "pending",
                "owner": store.traffic.replica_id,
            }
        route = store.parse(request.path_params["endpoint"], data)
        # keep the bucket table where it can, so sticky keys move only as weights require
        route = follow(store.traffic.routes.get(route.endpoint), route)
        change = await store.propose(route, actor, "PUT")
        return json_response(change)

    async def patch_route(self, request: Request) -> Response:
        actor = self._actor(request)
        store = self._store()
        route = store.patch(request.path_params["endpoint"], await self._body(request), actor)
        change = await store.propose(route, actor, "PATCH")
        return json_response(change)

    async def history(self, request: Request) -> Response:
        self._actor(request)
        endpoint = request.query_params.get("endpoint")
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError as exc:
            raise InvalidInputError("limit must be an integer") from exc
        return json_response({"changes": self._store().audit.history(endpoint, limit)})


def admin_routes(state: AppState, tokens: dict[str, SecretStr]) -> list[HttpRoute]:
    """The admin API's routes."""
    admin = _Admin(state, tokens)
    return [
        HttpRoute("/admin/routes", admin.list_routes, methods=["GET"]),
        HttpRoute("/admin/routes/{endpoint}", admin.get_route, methods=["GET"]),
        HttpRoute("/admin/routes/{endpoint}", admin.put_route, methods=["PUT"]),
        HttpRoute("/admin/routes/{endpoint}", admin.patch_route, methods=["PATCH"]),
        HttpRoute("/admin/history", admin.history, methods=["GET"]),
    ]
