"""The monitor's small HTTP side: latest window results, the history of windows, decisions,
webhook deliveries, metrics."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from monitors.ground_truth import GroundTruthService
from monitors.http_json import error as _error
from monitors.http_json import json_app
from monitors.http_json import json_response as _json
from monitors.service import MonitorService

__all__ = ["create_status_app"]


def create_status_app(
    service: MonitorService, ground_truth: GroundTruthService | None = None
) -> Starlette:
    """``GET /status``, ``GET /status/{model}/{version}``, ``GET /windows/{model}/{version}``,
    ``GET /health``, ``GET /metrics``; with the ground-truth side, ``GET /performance`` and
    ``GET /ab/{model}`` too."""

    async def status(request: Request) -> Response:
        return _json(
            {
                "models": service.latest,
                "decisions": {k: v.to_dict() for k, v in service.decider.states.items()},
                "deliveries": [asdict(d) for d in service.webhooks.recent],
                "pending_webhooks": service.outbox.size,
                **({"performance": ground_truth.status()} if ground_truth else {}),
            }
        )

    async def performance(request: Request) -> Response:
        if ground_truth is None:
            return _error(404, "the ground-truth side is off (performance.enabled)")
        return _json(ground_truth.status())

    async def ab(request: Request) -> Response:
        if ground_truth is None:
            return _error(404, "the ground-truth side is off (performance.enabled)")
        model = request.path_params["model"]
        return _json({"model": model, "pairs": ground_truth.verdicts(model)})

    async def model_status(request: Request) -> Response:
        key = f"{request.path_params['model']}/{request.path_params['version']}"
        if key not in service.latest:
            return _error(404, f"no window closed yet for {key}")
        return _json(service.latest[key])

    async def windows(request: Request) -> Response:
        """The model version's evaluated windows, oldest first (``monitors/history.py``):
        ``since`` (a window's ``seq``) for those after it, ``limit`` for the newest few."""
        model, version = request.path_params["model"], request.path_params["version"]
        query = {}
        for name in ("limit", "since"):
            text = request.query_params.get(name)
            if text is not None:
                # ASCII digits only ('²' is a digit to str.isdigit but not to int), and few
                # enough of them for int() (which refuses over 4,300)
                if not (text.isascii() and text.isdigit() and len(text) <= 18):
                    return _error(
                        400, f"'{name}' must be a non-negative integer of at most 18 digits"
                    )
                query[name] = int(text)
        if query.get("limit") == 0:  # the history reads 0 as no limit: every window kept
            return _error(400, "'limit' must be at least 1 (leave it out for every window kept)")
        history = service.history
        found = await asyncio.to_thread(history.windows, model, version, **query)
        reference = await asyncio.to_thread(history.reference, model, version)
        if reference is None:
            return _error(404, f"no window of {model}/{version} evaluated yet")
        return _json({"model": model, "version": version, "reference": reference, "windows": found})

    async def health(request: Request) -> Response:
        return _json({"live": True})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return json_app(
        [
            Route("/status", status),
            Route("/status/{model}/{version}", model_status),
            Route("/windows/{model}/{version}", windows),
            Route("/performance", performance),
            Route("/ab/{model}", ab),
            Route("/health", health),
            Route("/metrics", metrics),
        ]
    )
