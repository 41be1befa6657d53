"""Assemble the gateway's core from its settings, in start order, on one exit stack.

Start order: the link to the other workers (``gateway serve --workers N``), feature log,
registry, model manager, traffic (routes, shadows, canaries), route store (control topic
replay), then the routes of the config file for endpoints the control topic does not already
hold. The stack stops them in reverse: requests drain before the models unload, and the models
before the feature log flushes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from gateway.admission import Admission, Gate
from gateway.featurelog import (
    build_feature_log,
    build_feedback_log,
    build_record_builder,
    producer_options,
)
from gateway.feedback import FeedbackService
from gateway.inference import InferenceService
from gateway.metrics import GatewayMetrics, ShadowMetrics
from gateway.serving import (
    BatchObserver,
    Deployment,
    ModelLoader,
    ModelManager,
    RuntimeOptions,
)
from gateway.settings import GatewaySettings
from gateway.traffic import (
    AuditLog,
    ControlChannel,
    ControlSigner,
    Route,
    RouteChannel,
    RouteStore,
    ShadowDispatcher,
    Traffic,
    VariantStats,
)
from registry_client import ModelRef, Registry
from registry_client.settings import open_registry

__all__ = ["Core", "Peers", "start_core"]


@dataclass
class Core:
    """The started core the HTTP layer talks to."""

    service: InferenceService
    routes: RouteStore
    feedback: FeedbackService | None = None


class Peers(Protocol):
    """The other worker processes of one server (``gateway serve --workers N``)."""

    async def __aenter__(self) -> Peers: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    def route_channel(self, control: RouteChannel | None) -> RouteChannel:
        """Where route changes go so that every worker has applied one before it counts."""
        ...

    async def ready(self, registry: CollectorRegistry) -> None:
        """This worker serves now, with its metrics on ``registry``."""
        ...

    async def exposition(self) -> bytes:
        """The metrics of the whole server, summed over its workers."""
        ...


async def start_core(
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    stack: AsyncExitStack,
    registry: Registry | None = None,
    peers: Peers | None = None,
    admission: Admission | None = None,
) -> Core:
    """Start every part of the core on ``stack``; ``admission`` hears the primaries' queues."""
    replica_id = settings.server.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    if peers is not None:
        await stack.enter_async_context(peers)
    feature_log = None
    if settings.feature_log.enabled:
        feature_log = await stack.enter_async_context(
            build_feature_log(settings.feature_log, metrics, settings.server.shutdown_timeout_s)
        )
    model_registry = registry or open_registry(settings.registry)
    stack.push_async_callback(model_registry.aclose)
    executor = ThreadPoolExecutor(settings.runtime.worker_threads, thread_name_prefix="onnxruntime")
    # Shadows run on their own thread so they can never hold up a primary's batch.
    shadow_executor = ThreadPoolExecutor(1, thread_name_prefix="shadow")
    stack.callback(shadow_executor.shutdown, wait=False, cancel_futures=True)
    loader = ModelLoader(
        model_registry,
        RuntimeOptions(
            intra_op_threads=settings.runtime.intra_op_threads,
            inter_op_threads=settings.runtime.inter_op_threads,
            execution_providers=tuple(settings.runtime.execution_providers),
        ),
        executor,
        metrics,
        settings.runtime.worker_threads,
        settings.runtime.inline_run_max_s,
        _batch_observers(metrics, admission),
    )
    overrides = settings.batching_overrides()

    def deployment(
        endpoint: str, variant: str, ref: ModelRef, pool: ThreadPoolExecutor | None = None
    ) -> Deployment:
        return Deployment(
            name=endpoint,
            variant=variant,
            ref=ref,
            loader=loader,
            batching=settings.batching,
            overrides=overrides.get(endpoint, {}),
            metrics=metrics,
            poll_interval_s=settings.registry.poll_interval_s,
            drain_timeout_s=settings.server.shutdown_timeout_s,
            executor=pool,
        )

    manager = await stack.enter_async_context(ModelManager(deployment, executor))
    service: InferenceService | None = None

    async def make_shadow(route: Route, name: str) -> ShadowDispatcher:
        spec = next(s for s in route.shadows if s.name == name)
        shadow = deployment(route.endpoint, name, ModelRef.parse(spec.ref), shadow_executor)
        await shadow.start()
        assert service is not None
        dispatcher = ShadowDispatcher(
            spec, shadow, ShadowMetrics(metrics, route.endpoint, name), service.record_shadow
        )
        dispatcher.start()
        return dispatcher

    traffic = await stack.enter_async_context(
        Traffic(
            manager,
            make_shadow,
            VariantStats(),
            replica_id,
            takeover_grace_s=settings.control.canary_takeover_grace_s,
        )
    )
    service = InferenceService(
        traffic,
        metrics,
        settings.server.allow_nan,
        feature_log,
        build_record_builder(settings.feature_log),
    )
    channel: RouteChannel | None = None
    if settings.control.enabled:
        options = control_options(settings)
        control = settings.control
        assert control.signing_key is not None  # the settings require it when enabled
        signer = ControlSigner(
            control.topic,
            control.signing_key.get_secret_value().encode(),
            [key.get_secret_value().encode() for key in control.previous_signing_keys],
        )
        channel = ControlChannel(
            control.topic,
            options,
            control.timeout_s,
            signer,
            lambda reason: metrics.control_rejected.labels(reason).inc(),
        )
    audit = AuditLog(settings.admin.audit_log)
    if peers is not None:
        if channel is None:
            audit.load()  # the route store reads the file only when it has no channel
        channel = peers.route_channel(channel)
    store = await stack.enter_async_context(
        RouteStore(traffic, audit, metrics, channel, replica_id)
    )
    for route in settings.initial_routes():
        if route.endpoint not in traffic.routes:
            await traffic.apply(route, required=False)
    feedback = None
    if settings.feedback.enabled:
        feedback_log = await stack.enter_async_context(
            build_feedback_log(
                settings.feature_log, settings.feedback, metrics, settings.server.shutdown_timeout_s
            )
        )
        feedback = FeedbackService(traffic, feedback_log, metrics, settings.feedback.max_items)
    return Core(service, store, feedback)


# The feature log's producer options that the control channel's consumer would refuse (it takes
# the rest: the connection and its security).
_PRODUCER_ONLY = ("acks", "compression_type", "enable_idempotence", "linger_ms", "max_batch_size")


def control_options(settings: GatewaySettings) -> dict[str, Any]:
    """The Kafka client options of the control channel (its producer and its consumer): the
    feature log's connection and security, on the control topic's brokers."""
    options = producer_options(settings.feature_log)
    options = {k: v for k, v in options.items() if k not in _PRODUCER_ONLY}
    options["bootstrap_servers"] = (
        settings.control.bootstrap_servers or settings.feature_log.bootstrap_servers
    )
    return options


def _batch_observers(
    metrics: GatewayMetrics, admission: Admission | None
) -> Callable[[str, str, str, bool], BatchObserver]:
    """What each batcher reports to: its metrics, and for a primary its endpoint's gate."""

    def observer(endpoint: str, version: str, variant: str, primary: bool) -> BatchObserver:
        batch_metrics = metrics.for_batches(endpoint, version, variant)
        if admission is None or not primary:
            return batch_metrics
        return _Observers(batch_metrics, admission.gate(endpoint))

    return observer


class _Observers:
    """A batcher's metrics and its endpoint's admission gate, as one ``BatchObserver``."""

    def __init__(self, metrics: BatchObserver, gate: Gate) -> None:
        self._metrics = metrics
        self._gate = gate

    def batch_closed(self, rows: int, requests: int, reason: str) -> None:
        self._metrics.batch_closed(rows, requests, reason)

    def queue_wait(self, seconds: float) -> None:
        self._metrics.queue_wait(seconds)
        self._gate.queue_wait(seconds)

    def queue_depth(self, depth: int) -> None:
        self._metrics.queue_depth(depth)

    def run_time(self, seconds: float) -> None:
        self._metrics.run_time(seconds)
        self._gate.run_time(seconds)
