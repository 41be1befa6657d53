"""The Starlette application: routes, the error table, and the lifespan that starts the core."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import __version__
from gateway.deployments import Deployment, ModelLoader, ModelManager
from gateway.errors import (
    GatewayError,
    InvalidInputError,
    ModelExecutionError,
    NotReadyError,
    PayloadTooLargeError,
    UnknownModelError,
)
from gateway.feature_log_setup import build_feature_log, build_record_builder
from gateway.http._asgi import error_status, register_status
from gateway.http.endpoints import (
    AppState,
    InferEndpoint,
    MetadataEndpoints,
    PredictEndpoint,
    json_response,
)
from gateway.inference import InferenceService
from gateway.metrics import GatewayMetrics
from gateway.runtime import RuntimeOptions
from gateway.settings import GatewaySettings, RegistrySettings
from registry_client import LocalRegistry, Registry

__all__ = ["build_registry", "create_app"]

log = logging.getLogger(__name__)

# The error table. README.md documents the same rows.
register_status(InvalidInputError, 400)
register_status(UnknownModelError, 404)
register_status(PayloadTooLargeError, 413)
register_status(ModelExecutionError, 500)
register_status(NotReadyError, 503)  # also OverloadedError and DeadlineExceededError


def build_registry(settings: RegistrySettings) -> Registry:
    """The registry backend the settings name."""
    if settings.backend == "mlflow":
        from registry_client.mlflow import MlflowRegistry

        assert settings.mlflow_url is not None
        token = settings.mlflow_token.get_secret_value() if settings.mlflow_token else None
        return MlflowRegistry(
            settings.mlflow_url,
            settings.cache_dir,
            token=token,
            timeout_s=settings.timeout_s,
            retries=settings.retries,
        )
    return LocalRegistry(settings.root)


def create_app(
    settings: GatewaySettings,
    *,
    metrics_registry: CollectorRegistry | None = None,
    registry: Registry | None = None,
) -> Starlette:
    """Build the gateway's ASGI app; models load when its lifespan starts."""
    metrics = GatewayMetrics(metrics_registry or CollectorRegistry(), __version__)
    state = AppState(
        version=__version__,
        metrics=metrics,
        max_body_bytes=settings.server.max_body_bytes,
        routing_key_header=settings.server.routing_key_header.lower().encode("latin-1"),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # The feature log starts first and stops last, after every request has drained.
            feature_log = None
            if settings.feature_log.enabled:
                feature_log = await stack.enter_async_context(
                    build_feature_log(
                        settings.feature_log, metrics, settings.server.shutdown_timeout_s
                    )
                )
            model_registry = registry or build_registry(settings.registry)
            stack.push_async_callback(model_registry.aclose)
            executor = ThreadPoolExecutor(
                settings.runtime.worker_threads, thread_name_prefix="onnxruntime"
            )
            options = RuntimeOptions(
                intra_op_threads=settings.runtime.intra_op_threads,
                inter_op_threads=settings.runtime.inter_op_threads,
                execution_providers=tuple(settings.runtime.execution_providers),
            )
            loader = ModelLoader(
                model_registry, options, executor, metrics, settings.runtime.worker_threads
            )
            deployments = [
                Deployment(
                    name=model.name,
                    ref=model.model_ref,
                    loader=loader,
                    batching=settings.batching,
                    overrides=model.batching,
                    metrics=metrics,
                    poll_interval_s=settings.registry.poll_interval_s,
                    drain_timeout_s=settings.server.shutdown_timeout_s,
                )
                for model in settings.models
            ]
            manager = await stack.enter_async_context(ModelManager(deployments, executor))
            state.service = InferenceService(
                manager,
                metrics,
                settings.server.allow_nan,
                feature_log,
                build_record_builder(settings.feature_log),
            )
            log.info(
                "gateway ready: %s",
                {n: d.current and d.current.version for n, d in manager.deployments.items()},
            )
            try:
                yield
            finally:
                state.service = None

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
        Route("/v1/models/{name}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}:predict", predict, methods=["POST"]),
        Route("/metrics", meta.metrics, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error},
    )


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    response = json_response({"error": str(exc)}, error_status(exc))
    if isinstance(exc, NotReadyError):
        response.headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return json_response({"error": message}, exc.status_code)
