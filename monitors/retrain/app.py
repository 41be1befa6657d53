"""The worker's HTTP API: ``POST /events`` (the monitor's webhook), ``GET /jobs``,
``GET /jobs/{id}``, ``/metrics``, ``/health``.

An event is accepted only with a valid ``x-signature-256`` (HMAC-SHA256 of the body with the
shared secret, as ``monitors/webhooks.py`` signs); its CloudEvent id (signed, unlike an
``idempotency-key`` header, which must equal it when given) is recorded durably with the job it
joined before the answer, 202, goes out, so a repeat is answered 202 and starts nothing. An
event that would start a job names a model with a champion in the registry, or is refused 422:
a signature says who sent the event, not that its model is one to retrain, and a job (and its
metrics' series) per name sent would have no bound.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from monitors.feedback import MAX_FUTURE_S
from monitors.http_json import error as _error
from monitors.http_json import json_app
from monitors.http_json import json_response as _json
from monitors.retrain.jobs import JobStore
from monitors.retrain.metrics import RetrainMetrics
from monitors.webhooks import SIGNATURE_HEADER, signature
from registry_client import (
    InvalidReferenceError,
    ModelNotFoundError,
    RegistryError,
    VersionNotFoundError,
)
from registry_client.reference import check_model_name

__all__ = ["create_app", "trigger_of"]


# How deep the data a job keeps of an event may nest (JSON writers stop at a few hundred levels,
# and /jobs nests a job's triggers a few levels down); the monitor's data nests 3 or 4.
MAX_NESTING = 32


class EventError(ValueError):
    """An event body that is not a CloudEvent the worker can act on."""


def _time(value: object, received: float, where: str) -> float | None:
    """A window's time: absent (None), or seconds since the epoch, at most ``MAX_FUTURE_S``
    ahead of the worker's clock; anything else raises EventError naming ``where``."""
    if value is None:
        return None
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= received + MAX_FUTURE_S
    ):
        return float(value)
    raise EventError(
        f"{where} must be a time in seconds since the epoch, at most {MAX_FUTURE_S:.0f} s "
        f"ahead of the worker's clock, not {str(value)[:100]!r}"
    )


def trigger_of(event: object, received: float) -> tuple[str, dict[str, Any]]:
    """(model, trigger) of a CloudEvent; raises EventError naming what is wrong."""
    if not isinstance(event, dict):
        raise EventError("the body must be a CloudEvent: a JSON object")
    if event.get("specversion") != "1.0":
        raise EventError("specversion must be '1.0'")
    for key in ("id", "type", "source"):
        if not isinstance(event.get(key), str) or not event[key]:
            raise EventError(f"'{key}' must be a non-empty string")
    data = event.get("data")
    if not isinstance(data, dict):
        raise EventError("'data' must be an object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise EventError("data.model must be a non-empty string")
    try:
        check_model_name(model)
    except InvalidReferenceError as exc:
        raise EventError(f"data.model must be a registered model's name: {exc}") from exc
    window: dict[str, Any] = data["window"] if isinstance(data.get("window"), dict) else {}
    trigger: dict[str, Any] = {
        "event_id": event["id"],
        "type": event["type"],
        "time": event.get("time"),
        "received": received,
        "version": _version(data.get("version")),
        "window_id": window.get("id") or window.get("window_id"),
        "window_start": _time(window.get("start_time"), received, "data.window.start_time"),
        "window_end": _time(window.get("end_time"), received, "data.window.end_time"),
    }
    episode = data.get("episode")
    if isinstance(episode, dict) and isinstance(episode.get("windows"), list):
        where = "data.episode.windows[].start_time"
        times = [
            _time(w.get("start_time"), received, where)
            for w in episode["windows"]
            if isinstance(w, dict)
        ]
        starts = [t for t in times if t is not None]
        if starts and (trigger["window_start"] is None or min(starts) < trigger["window_start"]):
            trigger["window_start"] = min(starts)
    for key in ("drifted_features", "metric", "realized", "validation", "variant"):
        if key in data:
            trigger[key] = data[key]
    if _nests_deeper(trigger, MAX_NESTING):  # the job keeps it, /jobs writes it back as JSON
        raise EventError(f"data nests deeper than {MAX_NESTING} levels")
    return model, trigger


def _version(version: object) -> str | None:
    """The model version an event names, as the registry writes versions: text. A whole number
    (MLflow's versions are) is that number's text: 3 would otherwise never match the champion's
    "3", and the event would start a job of its own."""
    if version is None or (isinstance(version, str) and version):
        return version
    if type(version) is int and version >= 0:
        return str(version)
    raise EventError("data.version must be the model version: a non-empty string or a number")


def _nests_deeper(value: object, levels: int) -> bool:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return levels == 0 or any(_nests_deeper(v, levels - 1) for v in value)
    return False


def create_app(
    store: JobStore,
    metrics: RetrainMetrics,
    secret: str,
    event_types: list[str],
    max_body_bytes: int,
    wake: Any,
    champion: Callable[[str], Awaitable[object]],
) -> Starlette:
    """The worker's API over its job store; ``wake()`` after an event made or changed a job;
    ``champion(model)`` resolves the model's champion in the registry (RegistryError if none)."""
    key = secret

    async def events(request: Request) -> Response:
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            metrics.events.labels("invalid").inc()
            return _error(
                415, f"content-encoding {encoding[:50]!r} is not accepted: send the event as is"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                metrics.events.labels("invalid").inc()
                return _error(413, f"event bodies are at most {max_body_bytes} bytes")
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not given:
            metrics.events.labels("unauthenticated").inc()
            return _error(401, f"missing {SIGNATURE_HEADER} header (sha256=<HMAC of the body>)")
        if not hmac.compare_digest(given.encode(), signature(key, bytes(body)).encode()):
            metrics.events.labels("unauthenticated").inc()
            return _error(401, f"{SIGNATURE_HEADER} does not match the body")
        try:
            event = orjson.loads(body)
            named, trigger = trigger_of(event, time.time())
        except (orjson.JSONDecodeError, EventError) as exc:
            metrics.events.labels("invalid").inc()
            return _error(400, f"invalid event: {exc}")
        # The signature covers the body, not the headers: the key is the event's signed id,
        # or a replay under a fresh key would join a job again
        given_key = request.headers.get("idempotency-key")
        if given_key is not None and given_key != trigger["event_id"]:
            metrics.events.labels("invalid").inc()
            return _error(
                400,
                f"idempotency-key {given_key[:100]!r} is not the event's id "
                f"{trigger['event_id'][:100]!r} (only the body is signed)",
            )
        idempotency_key = trigger["event_id"]
        model: str | None = None  # an event of another type starts nothing
        if trigger["type"] in event_types:
            try:
                await champion(named)
            except (ModelNotFoundError, VersionNotFoundError) as exc:
                metrics.events.labels("unknown_model").inc()
                reason = f"data.model {named!r} is not a model this worker retrains: {exc}"
                return _error(422, reason)
            except RegistryError as exc:
                metrics.events.labels("registry_unavailable").inc()
                reason = f"the registry cannot say whether {named!r} has a champion: {exc}"
                return _error(503, reason)
            model = named
        received = await asyncio.to_thread(store.receive, idempotency_key, model, trigger)
        metrics.events.labels(received.outcome).inc()
        if received.outcome in ("queued", "coalesced"):
            wake()
        return _json({"outcome": received.outcome, "job": received.job_id}, 202)

    async def jobs(request: Request) -> Response:
        text = request.query_params.get("limit", "100")
        if not (text.isascii() and text.isdigit() and len(text) <= 4 and 1 <= int(text) <= 1000):
            return _error(400, "'limit' must be an integer from 1 to 1000")
        model = request.query_params.get("model")
        found = await asyncio.to_thread(store.jobs, model, int(text))
        return _json({"jobs": [j.as_dict() for j in found]})

    async def job(request: Request) -> Response:
        found = await asyncio.to_thread(store.get, request.path_params["id"])
        if found is None:
            return _error(404, f"no job {request.path_params['id'][:100]!r}")
        return _json(found.as_dict())

    async def health(request: Request) -> Response:
        return _json({"live": True})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return json_app(
        [
            Route("/events", events, methods=["POST"]),
            Route("/jobs", jobs, methods=["GET"]),
            Route("/jobs/{id}", job, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ]
    )
