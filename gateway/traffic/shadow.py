"""Shadow traffic: copies of sampled requests go to another model, whose answers are compared
with the primary's and recorded, never returned.

Copies wait in a bounded queue; a full queue, an unready shadow or a failing one drops and
counts the copy. The shadow runs on its own worker thread and may keep it busy at most
``max_busy_fraction`` of the time, so neither its slowness nor its failures reach the primary.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.errors import GatewayError
from gateway.featurelog import RequestInfo
from gateway.metrics import ShadowMetrics
from gateway.serving import Deployment, LoadedModel
from gateway.traffic.routes import ShadowSpec

__all__ = ["Comparison", "ShadowDispatcher", "compare"]

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Comparison:
    """How a shadow's answer differs from the primary's on the same rows."""

    agreement: float | None  # share of rows whose integer/text outputs (e.g. class) agree
    max_abs_diff: float | None  # largest difference of float outputs (e.g. scores)


def compare(primary: Tensors, shadow: Tensors) -> Comparison:
    """Compare outputs both models have: classes by agreement, numbers by difference."""
    agree_rows: np.ndarray | None = None
    max_diff: float | None = None
    for name, expected in primary.items():
        got = shadow.get(name)
        if got is None or got.shape != expected.shape:
            continue
        if expected.dtype.kind in "fc":
            diff = (
                float(np.max(np.abs(got.astype(np.float64) - expected))) if expected.size else 0.0
            )
            max_diff = diff if max_diff is None else max(max_diff, diff)
        else:
            same = (got == expected).reshape(len(expected), -1).all(axis=1)
            agree_rows = same if agree_rows is None else agree_rows & same
    agreement = float(agree_rows.mean()) if agree_rows is not None and agree_rows.size else None
    return Comparison(agreement, max_diff)


@dataclass(slots=True)
class _Copy:
    primary: LoadedModel
    inputs: Tensors
    outputs: Tensors
    rows: int
    info: RequestInfo


# (shadow model, request, inputs, shadow outputs, rows, latency, error, comparison fields)
RecordFn = Callable[
    [
        LoadedModel,
        RequestInfo,
        Tensors,
        Tensors | None,
        int,
        float,
        GatewayError | None,
        dict[str, Any],
    ],
    None,
]


class ShadowDispatcher:
    """Feeds one shadow variant of an endpoint."""

    def __init__(
        self,
        spec: ShadowSpec,
        deployment: Deployment,
        metrics: ShadowMetrics,
        record: RecordFn,
        timeout_s: float = 10.0,
    ) -> None:
        self.spec = spec
        self.deployment = deployment
        self._metrics = metrics
        self._record = record
        self._timeout_s = timeout_s
        self._queue: asyncio.Queue[_Copy] = asyncio.Queue(spec.queue_size)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name=f"shadow:{self.spec.name}")

    async def stop(self) -> None:
        """Stop feeding the shadow (queued copies are dropped and counted), then unload it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        while not self._queue.empty():
            copy = self._queue.get_nowait()
            self._metrics.outcome(copy.primary.variant, "dropped_shutdown")
        await self.deployment.stop()

    def offer(
        self, primary: LoadedModel, inputs: Tensors, outputs: Tensors, rows: int, info: RequestInfo
    ) -> None:
        """Maybe queue a copy of an answered request; never blocks, never raises."""
        if self.spec.sample < 1.0:
            if info.routing_key is not None:
                inside = _sample_point(info.routing_key) < self.spec.sample
            else:
                inside = random.random() < self.spec.sample
            if not inside:
                return
        try:
            self._queue.put_nowait(_Copy(primary, inputs, outputs, rows, info))
        except asyncio.QueueFull:
            self._metrics.outcome(primary.variant, "dropped_queue_full")

    async def _work(self) -> None:
        while True:
            copies = [await self._queue.get()]
            while not self._queue.empty() and len(copies) < 64:
                copies.append(self._queue.get_nowait())
            model = self.deployment.current
            if model is None:
                for copy in copies:
                    self._metrics.outcome(copy.primary.variant, "dropped_not_ready")
                continue
            started = time.perf_counter()
            await asyncio.gather(*(self._run(model, copy) for copy in copies))
            busy = time.perf_counter() - started
            # Keep the shadow's worker idle long enough that it is busy at most the allowed share.
            await asyncio.sleep(busy * (1 / self.spec.max_busy_fraction - 1))

    async def _run(self, model: LoadedModel, copy: _Copy) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        error: GatewayError | None = None
        outputs: Tensors | None = None
        comparison: Comparison | None = None
        try:
            outputs = await model.batcher.submit(
                copy.inputs, copy.rows, loop.time() + self._timeout_s
            )
        except GatewayError as exc:
            error = exc
        latency_s = time.perf_counter() - started
        pair = copy.primary.variant
        if outputs is None:
            self._metrics.outcome(pair, "error")
        else:
            comparison = compare(copy.outputs, outputs)
            self._metrics.compared(
                pair, latency_s, comparison.agreement, copy.rows, comparison.max_abs_diff
            )
        try:
            fields = comparison_fields(comparison, pair)
            self._record(
                model, copy.info, copy.inputs, outputs, copy.rows, latency_s, error, fields
            )
        except Exception:  # recording must never take the shadow worker down
            log.exception("shadow %s: recording failed", self.spec.name)

    @property
    def depth(self) -> int:
        return self._queue.qsize()


def _sample_point(key: str) -> float:
    """Where a routing key falls in [0, 1) for sampling: a hash of its own, not its routing
    bucket, since the buckets below a share are those of one variant (the lowest)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"shadow").digest()
    return int.from_bytes(digest, "big") / 2**64


def comparison_fields(comparison: Comparison | None, primary_variant: str) -> dict[str, Any]:
    """The ``comparison`` field of a shadow's log record."""
    fields: dict[str, Any] = {"primary_variant": primary_variant}
    if comparison is not None:
        fields["agreement"] = comparison.agreement
        fields["max_abs_diff"] = comparison.max_abs_diff
    return fields
