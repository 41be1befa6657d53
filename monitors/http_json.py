"""JSON answers for the monitor's and the retraining worker's HTTP apps, JSON errors for what
a Starlette router refuses (an unknown path, a method no route there takes), which the
gateway's app uses too, and the server both apps run on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp

if TYPE_CHECKING:
    import uvicorn

__all__ = ["error", "http_error", "http_server", "json_app", "json_response"]


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def json_app(routes: Sequence[BaseRoute]) -> Starlette:
    """A Starlette app whose router refusals are ``{"error": ...}`` like the routes' own, and
    that never redirects to the path with or without a trailing slash (Starlette builds that
    redirect from the client's Host header)."""
    app = Starlette(routes=list(routes), exception_handlers={HTTPException: http_error})
    app.router.redirect_slashes = False
    return app


def http_server(app: ASGIApp, host: str, port: int) -> uvicorn.Server:
    """The uvicorn server of the monitor's and the retraining worker's HTTP API, on h11: a
    request head over 16 KiB is answered 400 and the connection closed. (uvicorn's default
    parser, httptools, buffered a header line however long: one client sending an endless
    one grew the monitor by 280 MB for 200 MB sent, without end.)"""
    import uvicorn  # here: the CLI's other commands start without it

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", http="h11"
    )
    return uvicorn.Server(config)


async def http_error(request: Request, exc: Exception) -> Response:
    """A router refusal as ``{"error": ...}``: 404 naming the method and path, 405 with
    ``Allow`` naming every method some route takes there (the gateway's app uses it too)."""
    assert isinstance(exc, HTTPException)
    path = request.url.path[:200]
    if exc.status_code == 405:
        allowed = ", ".join(_allowed_methods(request))
        response = error(405, f"method {request.method} is not allowed on {path}; use {allowed}")
        response.headers["allow"] = allowed
        return response
    if exc.status_code == 404:
        return error(404, f"no route {request.method} {path}")
    return error(exc.status_code, str(exc.detail))


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on the request's path (Starlette's 405 names one route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return sorted(methods)
