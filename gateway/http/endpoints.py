"""Endpoints: parse, call the core, render. The infer endpoints are plain ASGI for speed."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from gateway.deployments import Deployment, LoadedModel
from gateway.errors import GatewayError, InvalidInputError, NotReadyError
from gateway.http._asgi import Receive, Scope, Send, header, read_body, send_error, send_response
from gateway.inference import InferenceService
from gateway.log_records import RequestInfo
from gateway.metrics import GatewayMetrics
from gateway.protocol import (
    InferRequest,
    parse_infer_request,
    parse_instances,
    render_infer_response,
    render_predictions,
)
from gateway.route_store import RouteStore

__all__ = ["AppState", "InferEndpoint", "PredictEndpoint"]

log = logging.getLogger(__name__)

SERVER_NAME = "model-gateway"

Tensors = dict[str, np.ndarray]
ParsedT = TypeVar("ParsedT")


@dataclass
class AppState:
    """What the endpoints share; ``service`` is set by the lifespan once models are loaded."""

    version: str
    metrics: GatewayMetrics
    max_body_bytes: int
    routing_key_header: bytes
    pin_header: bytes
    service: InferenceService | None = None
    route_store: RouteStore | None = None

    def require_service(self) -> InferenceService:
        if self.service is None:
            raise NotReadyError("the gateway is starting")
        return self.service


# Request ids: a random per-process prefix and a counter, unique across replicas and restarts
# and much cheaper than a uuid4 per request.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count()


def _request_id() -> str:
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


_WATCH_AFTER_S = 0.02


class _ClientGoneError(Exception):
    """The caller disconnected while its request waited; nobody is left to answer."""


class _InferBase(Generic[ParsedT]):
    """Shared ASGI plumbing of the infer endpoints: parse, infer, render."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def parse(self, model: LoadedModel, info: RequestInfo, scope: Scope, body: bytes) -> ParsedT:
        """Decode the body into the request's tensors (and whatever rendering needs)."""
        raise NotImplementedError

    def inputs(self, parsed: ParsedT) -> dict[str, np.ndarray]:
        raise NotImplementedError

    async def respond(
        self, send: Send, model: LoadedModel, info: RequestInfo, parsed: ParsedT, outputs: Tensors
    ) -> None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        info = RequestInfo(_request_id(), time.time(), scope["path_params"]["name"])
        try:
            service = self.state.require_service()
            version = scope["path_params"].get("version")
            service.traffic.route(info.endpoint)  # unknown models are refused before the body
            key = header(scope, self.state.routing_key_header)
            if key is not None:
                info.routing_key = key.decode("latin-1")
            pin = header(scope, self.state.pin_header)
            body = await read_body(scope, receive, self.state.max_body_bytes)
            # From here to the batcher's queue there is no await, so neither a model swap nor a
            # route change can slip in between choosing the version and queueing on it.
            model = service.pick(info, pin.decode("latin-1") if pin else None, version)
            try:
                parsed = self.parse(model, info, scope, body)
            except GatewayError as exc:
                service.reject(model, info, started, exc)
                raise
            outputs = await self._infer(service, model, self.inputs(parsed), started, info, receive)
            await self.respond(send, model, info, parsed, outputs)
        except _ClientGoneError:
            return
        except GatewayError as exc:
            await send_error(send, exc, info.request_id)
        except Exception:
            log.exception("unexpected error answering %s", scope.get("path"))
            await send_error(send, GatewayError("internal error in the gateway; see its log"))

    async def _infer(
        self,
        service: InferenceService,
        model: LoadedModel,
        inputs: Tensors,
        started: float,
        info: RequestInfo,
        receive: Receive,
    ) -> Tensors:
        """Infer, but give up (leaving the batch queue) if the client disconnects meanwhile.

        Listening for the disconnect costs a task, so it starts only once the request has
        waited ``_WATCH_AFTER_S``: most requests are answered before that.
        """
        task = asyncio.current_task()
        assert task is not None
        gone = False
        watcher: asyncio.Future[Any] | None = None

        def on_message(fut: asyncio.Future[Any]) -> None:
            nonlocal gone
            if fut.cancelled() or fut.exception() is not None:
                return
            message = fut.result()
            if isinstance(message, dict) and message.get("type") == "http.disconnect":
                gone = True
                task.cancel()

        def watch() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(receive())
            watcher.add_done_callback(on_message)

        handle = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, watch)
        try:
            return await service.infer(model, inputs, started, info)
        except asyncio.CancelledError:
            if gone:
                task.uncancel()
                raise _ClientGoneError from None
            raise
        finally:
            handle.cancel()
            if watcher is not None:
                watcher.remove_done_callback(on_message)
                watcher.cancel()


class InferEndpoint(_InferBase[InferRequest]):
    """``POST /v2/models/{name}[/versions/{version}]/infer``: OIP v2, JSON or binary tensors."""

    def parse(
        self, model: LoadedModel, info: RequestInfo, scope: Scope, body: bytes
    ) -> InferRequest:
        raw_length = header(scope, b"inference-header-content-length")
        header_length = None
        if raw_length is not None:
            if not raw_length.strip().isdigit():
                raise InvalidInputError("Inference-Header-Content-Length must be an integer")
            header_length = int(raw_length)
        request = parse_infer_request(body, header_length)
        if request.id is not None:
            info.request_id = request.id
        for requested in request.outputs or ():
            if model.signature.output(requested.name) is None:
                known = [o.name for o in model.signature.outputs]
                raise InvalidInputError(f"unknown output {requested.name!r}; the model has {known}")
        return request

    def inputs(self, parsed: InferRequest) -> Tensors:
        return parsed.inputs

    async def respond(
        self,
        send: Send,
        model: LoadedModel,
        info: RequestInfo,
        parsed: InferRequest,
        outputs: Tensors,
    ) -> None:
        payload, json_length = render_infer_response(model.name, model.version, parsed, outputs)
        extra = _served_by(model, info)
        if json_length is None:
            await send_response(send, 200, payload, extra_headers=extra)
        else:
            extra.append((b"inference-header-content-length", str(json_length).encode()))
            await send_response(send, 200, payload, b"application/octet-stream", extra)


class PredictEndpoint(_InferBase[Tensors]):
    """``POST /v1/models/{name}:predict``: named features in, one prediction per row out."""

    def parse(self, model: LoadedModel, info: RequestInfo, scope: Scope, body: bytes) -> Tensors:
        request_id, inputs = parse_instances(body, model.signature, model.metadata)
        if request_id is not None:
            info.request_id = request_id
        return inputs

    def inputs(self, parsed: Tensors) -> Tensors:
        return parsed

    async def respond(
        self, send: Send, model: LoadedModel, info: RequestInfo, parsed: Tensors, outputs: Tensors
    ) -> None:
        request_id = info.request_id
        body = render_predictions(model.name, model.version, request_id, outputs)
        await send_response(send, 200, body, extra_headers=_served_by(model, info))


def _served_by(model: LoadedModel, info: RequestInfo) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-request-id", info.request_id.encode()),
        (b"x-model-variant", model.variant.encode()),
        (b"x-model-version", model.version.encode()),
    ]


def json_response(doc: object, status: int = 200) -> Response:
    """A JSON response encoded with orjson."""
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


class MetadataEndpoints:
    """The small GET endpoints: health, server and model metadata, readiness, metrics."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        service = self.state.service
        if service is not None and service.traffic.ready:
            return json_response({"ready": True})
        problems = {}
        if service is not None:
            problems = {
                f"{endpoint}/{variant}": d.last_error or "loading"
                for (endpoint, variant), d in service.traffic.manager.deployments.items()
                if d.current is None
            }
        return json_response(
            {"ready": False, "error": f"models not ready: {problems or 'starting'}"}, 503
        )

    async def server(self, request: Request) -> Response:
        return json_response(
            {
                "name": SERVER_NAME,
                "version": self.state.version,
                "extensions": ["binary_tensor_data"],
            }
        )

    async def model_metadata(self, request: Request) -> Response:
        model = self._model(request)
        signature = model.signature
        versions = sorted(
            {d.current.version for d in service_versions(self.state, model.name) if d.current}
        )
        doc: dict[str, object] = {
            "name": model.name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": [spec.describe() for spec in signature.inputs],
            "outputs": [spec.describe() for spec in signature.outputs],
        }
        metadata = model.metadata
        if metadata.features:
            doc["parameters"] = {
                "ref": str(model.ref),
                "variant": model.variant,
                "features": [f.model_dump(exclude_none=True) for f in metadata.features],
                "class_labels": metadata.class_labels,
            }
        return json_response(doc)

    async def model_ready(self, request: Request) -> Response:
        model = self._model(request)
        return json_response({"name": model.name, "version": model.version, "ready": True})

    async def metrics(self, request: Request) -> Response:
        return Response(
            generate_latest(self.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    def _model(self, request: Request) -> LoadedModel:
        service = self.state.require_service()
        name, version = request.path_params["name"], request.path_params.get("version")
        if version is None:
            return service.traffic.primary(name)
        return service.traffic.pick(name, version=version)


def service_versions(state: AppState, endpoint: str) -> list[Deployment]:
    """The deployments serving an endpoint's variants."""
    return state.require_service().traffic.manager.for_endpoint(endpoint)
