"""The operator API: read and change routes, with bearer-token authentication and an audit trail.

``GET /admin/routes``, ``GET/PUT/PATCH /admin/routes/{endpoint}``, ``GET /admin/history``.
With no token configured the API is disabled (403), never open. A route's answer carries its
revision as an ETag; a write that sends ``If-Match`` applies only on that revision (412
otherwise), one without it applies on whatever the route is when its turn comes.
"""

from __future__ import annotations

import hmac
from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from gateway.errors import GatewayError, InvalidInputError, PayloadTooLargeError
from gateway.http.endpoints import AppState, json_response
from gateway.protocol import decode_body
from gateway.protocol._json import load_object
from gateway.traffic import RouteStore

__all__ = ["AdminAuthError", "AdminDisabledError", "admin_routes"]

MAX_ADMIN_BODY_BYTES = 64 * 1024  # a route of 16 variants and 8 shadows is a few KiB
MAX_HISTORY = 1000


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
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_ADMIN_BODY_BYTES:
                raise PayloadTooLargeError(
                    f"admin request bodies are at most {MAX_ADMIN_BODY_BYTES} bytes"
                )
        # a gzip or deflate body, as every endpoint takes it (the limit holds decompressed too)
        return load_object(decode_body(bytes(body), request.scope["headers"], MAX_ADMIN_BODY_BYTES))

    async def list_routes(self, request: Request) -> Response:
        self._actor(request)
        routes = self._store().traffic.routes
        return json_response({"routes": [r.model_dump(mode="json") for r in routes.values()]})

    async def get_route(self, request: Request) -> Response:
        self._actor(request)
        route = self._store().traffic.route(request.path_params["endpoint"])
        return _tagged(json_response(route.model_dump(mode="json")), route.revision)

    async def put_route(self, request: Request) -> Response:
        actor = self._actor(request)
        store = self._store()
        endpoint = request.path_params["endpoint"]
        data = await self._body(request)
        change = await store.replace(endpoint, data, actor, request.headers.get("if-match"))
        return _tagged(json_response(change), change["after"]["revision"])

    async def patch_route(self, request: Request) -> Response:
        actor = self._actor(request)
        store = self._store()
        endpoint = request.path_params["endpoint"]
        data = await self._body(request)
        change = await store.update(endpoint, data, actor, request.headers.get("if-match"))
        return _tagged(json_response(change), change["after"]["revision"])

    async def history(self, request: Request) -> Response:
        self._actor(request)
        endpoint = request.query_params.get("endpoint")
        text = request.query_params.get("limit", "100")
        if not (text.isascii() and text.isdigit() and len(text) <= 6) or not (
            1 <= int(text) <= MAX_HISTORY
        ):
            raise InvalidInputError(f"limit must be an integer from 1 to {MAX_HISTORY}")
        return json_response({"changes": self._store().audit.history(endpoint, int(text))})


def _tagged(response: Response, revision: int) -> Response:
    response.headers["etag"] = f'"{revision}"'
    return response


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
