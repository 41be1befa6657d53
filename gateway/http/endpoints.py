"""Endpoints: parse, call the core, render. The infer endpoints are plain ASGI for speed."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from gateway.deployments import LoadedModel
from gateway.errors import GatewayError, InvalidInputError, NotReadyError
from gateway.http._asgi import Receive, Scope, Send, header, read_body, send_error, send_response
from gateway.inference import InferenceService
from gateway.metrics import GatewayMetrics
from gateway.protocol import (
    parse_infer_request,
    parse_instances,
    render_infer_response,
    render_predictions,
)

__all__ = ["AppState", "InferEndpoint", "PredictEndpoint"]

log = logging.getLogger(__name__)

SERVER_NAME = "model-gateway"


@dataclass
class AppState:
    """What the endpoints share; ``service`` is set by the lifespan once models are loaded."""

    version: str
    metrics: GatewayMetrics
    max_body_bytes: int
    service: InferenceService | None = None

    def require_service(self) -> InferenceService:
        if self.service is None:
            raise NotReadyError("the gateway is starting")
        return self.service


class _ClientGoneError(Exception):
    """The caller disconnected while its request waited; nobody is left to answer."""


class _InferBase:
    """Shared ASGI plumbing of the two infer endpoints."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            service = self.state.require_service()
            params = scope["path_params"]
            name, version = params["name"], params.get("version")
            service.manager.deployment(name)  # an unknown model is refused before the body
            body = await read_body(scope, receive, self.state.max_body_bytes)
            # From here to the batcher's queue there is no await, so a model swap cannot slip in
            # between choosing the version and queueing on it.
            model = service.model(name, version)
            await self.handle(service, model, scope, body, started, receive, send)
        except _ClientGoneError:
            return
        except GatewayError as exc:
            await send_error(send, exc)
        except Exception:
            log.exception("unexpected error answering %s", scope.get("path"))
            await send_error(send, GatewayError("internal error in the gateway; see its log"))

    async def handle(
        self,
        service: InferenceService,
        model: LoadedModel,
        scope: Scope,
        body: bytes,
        started: float,
        receive: Receive,
        send: Send,
    ) -> None:
        raise NotImplementedError

    async def run(
        self,
        service: InferenceService,
        model: LoadedModel,
        inputs: dict[str, np.ndarray],
        started: float,
        receive: Receive,
    ) -> dict[str, np.ndarray]:
        """Infer, but give up (leaving the batch queue) if the client disconnects meanwhile."""
        task = asyncio.current_task()
        assert task is not None
        gone = False

        def on_message(fut: asyncio.Future[Any]) -> None:
            nonlocal gone
            if fut.cancelled() or fut.exception() is not None:
                return
            message = fut.result()
            if isinstance(message, dict) and message.get("type") == "http.disconnect":
                gone = True
                task.cancel()

        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(on_message)
        try:
            return await service.infer(model, inputs, started)
        except asyncio.CancelledError:
            if gone:
                task.uncancel()
                raise _ClientGoneError from None
            raise
        finally:
            watcher.remove_done_callback(on_message)
            watcher.cancel()


class InferEndpoint(_InferBase):
    """``POST /v2/models/{name}[/versions/{version}]/infer``: OIP v2, JSON or binary tensors."""

    async def handle(
        self,
        service: InferenceService,
        model: LoadedModel,
        scope: Scope,
        body: bytes,
        started: float,
        receive: Receive,
        send: Send,
    ) -> None:
        raw_length = header(scope, b"inference-header-content-length")
        header_length = None
        if raw_length is not None:
            if not raw_length.strip().isdigit():
                raise InvalidInputError("Inference-Header-Content-Length must be an integer")
            header_length = int(raw_length)
        request = parse_infer_request(body, header_length)
        if request.outputs is not None:
            for requested in request.outputs:
                if model.signature.output(requested.name) is None:
                    known = [o.name for o in model.signature.outputs]
                    raise InvalidInputError(
                        f"unknown output {requested.name!r}; the model has {known}"
                    )
        outputs = await self.run(service, model, request.inputs, started, receive)
        payload, json_length = render_infer_response(model.name, model.version, request, outputs)
        if json_length is None:
            await send_response(send, 200, payload)
        else:
            await send_response(
                send,
                200,
                payload,
                b"application/octet-stream",
                [(b"inference-header-content-length", str(json_length).encode())],
            )


class PredictEndpoint(_InferBase):
    """``POST /v1/models/{name}:predict``: named features in, one prediction per row out."""

    async def handle(
        self,
        service: InferenceService,
        model: LoadedModel,
        scope: Scope,
        body: bytes,
        started: float,
        receive: Receive,
        send: Send,
    ) -> None:
        request_id, inputs = parse_instances(body, model.signature, model.metadata)
        outputs = await self.run(service, model, inputs, started, receive)
        await send_response(
            send, 200, render_predictions(model.name, model.version, request_id, outputs)
        )


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
        if service is not None and service.manager.ready:
            return json_response({"ready": True})
        problems = {}
        if service is not None:
            problems = {
                name: d.last_error or "loading"
                for name, d in service.manager.deployments.items()
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
        doc: dict[str, object] = {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.describe() for spec in signature.inputs],
            "outputs": [spec.describe() for spec in signature.outputs],
        }
        metadata = model.metadata
        if metadata.features:
            doc["parameters"] = {
                "ref": str(model.ref),
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
        params = request.path_params
        return service.model(params["name"], params.get("version"))
