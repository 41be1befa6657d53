"""The Starlette application: routes, the error table, and the lifespan that starts the core."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import __version__
from gateway.admission import Admission
from gateway.assembly import Peers, start_core
from gateway.errors import (
    GatewayError,
    InvalidInputError,
    ModelExecutionError,
    ModelLoadError,
    NotReadyError,
    PayloadTooLargeError,
    RateLimitedError,
    UnknownModelError,
)
from gateway.feedback import FeedbackDisabledError
from gateway.http._asgi import (
    Receive,
    Reply,
    Scope,
    Send,
    error_status,
    register_status,
    retry_after,
)
from gateway.http._parse_pool import ParsePool
from gateway.http._paths import decode_path
from gateway.http.admin import AdminAuthError, AdminDisabledError, admin_routes
from gateway.http.endpoints import (
    AppState,
    FastEndpoint,
    FeedbackEndpoint,
    InferEndpoint,
    MetadataEndpoints,
    PredictEndpoint,
    json_response,
)
from gateway.http.health import Heartbeat
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.traffic import RevisionMismatchError, RouteConflictError
from monitors.http_json import http_error
from registry_client import Registry

__all__ = ["GatewayApp", "create_app"]

log = logging.getLogger(__name__)

# The error table. README.md documents the same rows.
register_status(InvalidInputError, 400)
register_status(UnknownModelError, 404)
register_status(PayloadTooLargeError, 413)
register_status(ModelExecutionError, 500)
register_status(NotReadyError, 503)  # also OverloadedError and DeadlineExceededError
register_status(RateLimitedError, 429)  # a caller over its own rate (admission control)
register_status(AdminAuthError, 401)
register_status(AdminDisabledError, 403)
register_status(ModelLoadError, 409)  # a route change naming a model that cannot load
register_status(RouteConflictError, 409)  # other replicas' changes kept coming first
register_status(RevisionMismatchError, 412)  # If-Match named another revision
register_status(FeedbackDisabledError, 404)


def create_app(
    settings: GatewaySettings,
    *,
    metrics_registry: CollectorRegistry | None = None,
    registry: Registry | None = None,
    peers: Peers | None = None,
    heartbeat: Heartbeat | None = None,
) -> GatewayApp:
    """Build the gateway's ASGI app; models load when its lifespan starts. ``peers``: the
    other worker processes of this server, if any; ``heartbeat``: published for the health
    port while the lifespan runs."""
    metrics = GatewayMetrics(metrics_registry or CollectorRegistry(), __version__)
    state = AppState(
        version=__version__,
        metrics=metrics,
        max_body_bytes=settings.server.max_body_bytes,
        routing_key_header=settings.server.routing_key_header.lower().encode("latin-1"),
        pin_header=settings.server.pin_header.lower().encode("latin-1"),
        readiness=settings.server.readiness,
        feedback_enabled=settings.feedback.enabled,
    )
    if settings.admission.enabled:
        state.admission = Admission(settings.admission)
        metrics.watch_admission(state.admission.snapshot)
    if settings.server.parse_processes > 0:
        state.parse_pool = ParsePool(
            settings.server.parse_processes, metrics.parse_processes_lost.inc
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if state.parse_pool is not None:  # started by the first large body, if one comes
                stack.push_async_callback(state.parse_pool.aclose)
            if heartbeat is not None:  # from the start: loading models is progress too
                stack.callback(heartbeat.run_on(asyncio.get_running_loop(), meta.ready_reply))
            core = await start_core(settings, metrics, stack, registry, peers, state.admission)
            state.service, state.route_store = core.service, core.routes
            state.feedback = core.feedback
            if peers is not None:
                await peers.ready(metrics.registry)
            log.info("gateway ready: %s", sorted(core.service.traffic.routes))
            # Everything built so far lives as long as the process: keep it out of the
            # collector's reach, so full collections stay cheap under load.
            gc.freeze()
            try:
                yield
            finally:
                state.service = state.route_store = state.feedback = None

    meta = MetadataEndpoints(state)
    infer = InferEndpoint(state)
    predict = PredictEndpoint(state)
    routes = [
        Route("/v2/health/live", meta.live, methods=["GET"]),
        Route("/v2/health/ready", meta.ready, methods=["GET"]),
        Route("/v2", meta.server, methods=["GET"]),
        Route("/v2/models/{name}", meta.model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", meta.model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", meta.model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", meta.model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/feedback", FeedbackEndpoint(state).submit, methods=["POST"]),
        Route("/v1/models/{name}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}:predict", predict, methods=["POST"]),
        Route("/metrics", meta.metrics if peers is None else _all_workers(peers), methods=["GET"]),
        *admin_routes(state, settings.admin.tokens),
    ]
    probes = meta.probes()
    if peers is not None:  # every worker's metrics are gathered over the network: not at once
        del probes["/metrics"]
    return GatewayApp(
        infer,
        predict,
        probes,
        state.parse_pool,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={GatewayError: _gateway_error, HTTPException: http_error},
    )


_INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
_PREDICT_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?:predict$"
)


class GatewayApp(Starlette):
    """Starlette, with inference calls sent straight to their endpoint.

    The infer endpoints are plain ASGI and handle their own errors, so for them the router's
    matching over every route and the middleware stack are pure cost on the hot path.
    """

    def __init__(
        self,
        infer: InferEndpoint,
        predict: PredictEndpoint,
        probes: dict[str, Callable[[], Reply]],
        parse_pool: ParsePool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # A redirect to the added or dropped slash would be built from the Host header.
        self.router.redirect_slashes = False
        self._fast: tuple[tuple[re.Pattern[str], InferEndpoint | PredictEndpoint], ...] = (
            (_INFER_PATH, infer),
            (_PREDICT_PATH, predict),
        )
        self.probes = probes  # health and metrics: answered by the protocol, ahead of the rest
        self.parse_pool = parse_pool  # where large JSON bodies are parsed (None: on threads)

    def inference_target(self, path: str) -> tuple[FastEndpoint, str, str | None] | None:
        """The endpoint that answers ``POST path`` (an inference call), its model and version."""
        for pattern, endpoint in self._fast:
            match = pattern.match(path)
            if match is not None:
                return endpoint, match["name"], match["version"]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path")
        if raw_path and (b"%2F" in raw_path or b"%2f" in raw_path):
            scope["path"] = scope.get("root_path", "") + decode_path(raw_path)  # any server
        if scope["type"] == "http" and scope["method"] == "POST":
            for pattern, endpoint in self._fast:
                match = pattern.match(scope["path"])
                if match is not None:
                    params = {"name": match["name"]}
                    if match["version"] is not None:
                        params["version"] = match["version"]
                    scope["path_params"] = params
                    await endpoint(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def _all_workers(peers: Peers) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(request: Request) -> Response:
        return Response(await peers.exposition(), media_type=CONTENT_TYPE_LATEST)

    return metrics


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    response = json_response({"error": str(exc)}, error_status(exc))
    if isinstance(exc, NotReadyError):
        response.headers["retry-after"] = retry_after(exc)
    if isinstance(exc, AdminAuthError):
        response.headers["www-authenticate"] = "Bearer"
    return response
