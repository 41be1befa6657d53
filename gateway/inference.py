"""The core of one prediction: check inputs against the signature, queue, run, measure, log.

Every protocol's endpoint calls ``InferenceService.infer``; nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
from prometheus_client import Counter, Histogram

from gateway.errors import (
    DeadlineExceededError,
    GatewayError,
    InvalidInputError,
    NotReadyError,
)
from gateway.featurelog import FeatureLog, RecordBuilder, RequestInfo
from gateway.metrics import GatewayMetrics
from gateway.serving import LoadedModel, Signature, datatype_of
from gateway.traffic import Traffic
from monitors.schema import Status

__all__ = ["InferenceService", "validate_inputs"]

Tensors = dict[str, np.ndarray]


class InferenceService:
    """Runs predictions against the served models, records their outcome and logs them."""

    def __init__(
        self,
        traffic: Traffic,
        metrics: GatewayMetrics,
        allow_nan: bool,
        feature_log: FeatureLog | None = None,
        records: RecordBuilder | None = None,
    ) -> None:
        self.traffic = traffic
        self._metrics = metrics
        self._allow_nan = allow_nan
        self._feature_log = feature_log
        self._records = records or RecordBuilder()
        self._children: dict[tuple[str, ...], tuple[Counter, Histogram]] = {}
        self._rows: dict[tuple[str, ...], Counter] = {}

    def pick(
        self, info: RequestInfo, pinned: str | None = None, version: str | None = None
    ) -> LoadedModel:
        """The variant that serves this request (raises UnknownModelError / NotReadyError)."""
        return self.traffic.pick(info.endpoint, info.routing_key, pinned, version)

    def start(
        self, model: LoadedModel, inputs: Tensors, info: RequestInfo, started: float
    ) -> tuple[int, asyncio.Future[Tensors]]:
        """Check ``inputs`` and queue them on the model's batcher, without waiting.

        ``started`` is the request's arrival (``time.perf_counter``): its deadline and its
        queue wait count from it. Returns the row count and the future of the outputs; raises
        GatewayError (invalid input, overloaded). Whatever happens, the caller then calls
        ``finish`` once.
        """
        rows = validate_inputs(model.signature, inputs, self._allow_nan)
        # the deadline is a loop timer: on the loop's clock, counted from the arrival
        waited_s = time.perf_counter() - started
        deadline = asyncio.get_running_loop().time() - waited_s + model.batching.timeout_s
        return rows, model.batcher.enqueue(inputs, rows, deadline, started)

    def check_deadline(
        self,
        model: LoadedModel,
        info: RequestInfo,
        started: float,
        when: str = "before it was read",
    ) -> None:
        """Drop a request whose deadline passed before it was parsed (a pipelined request that
        waited behind others, a slow sender), or ``when`` else: raises DeadlineExceededError,
        recorded, not queued."""
        if time.perf_counter() - started < model.batching.timeout_s:
            return
        exc = DeadlineExceededError(f"model {model.name}: the request's deadline passed {when}")
        self.reject(model, info, started, exc)
        raise exc

    def finish(
        self,
        model: LoadedModel,
        info: RequestInfo,
        inputs: Tensors,
        rows: int,
        started: float,
        outputs: Tensors | None,
        error: BaseException | None = None,
    ) -> None:
        """Record a started request's outcome: metrics, canary stats, shadows, feature log."""
        status: Status = "error"
        failure: GatewayError | None = None
        if error is None and outputs is not None:
            status = "ok"
            rows_total = self._rows.get((model.name, model.version, model.variant))
            if rows_total is None:
                rows_total = self._metrics.rows.labels(model.name, model.version, model.variant)
                self._rows[(model.name, model.version, model.variant)] = rows_total
            rows_total.inc(rows)
            for shadow in self.traffic.shadows(model.name):
                shadow.offer(model, inputs, outputs, rows, info)
        elif isinstance(error, GatewayError):
            status, failure = _status(error), error
        elif isinstance(error, asyncio.CancelledError):
            status = "cancelled"  # the caller disconnected; its rows left the batch queue
        latency_s = time.perf_counter() - started
        failed, invalid = status in ("error", "timeout"), status == "invalid"
        self.traffic.stats.record(model.name, model.variant, latency_s, failed, invalid)
        self._finish(model, info, latency_s, "primary", status, failure, rows, inputs, outputs)

    async def infer(
        self, model: LoadedModel, inputs: Tensors, started: float, info: RequestInfo
    ) -> Tensors:
        """Predict for ``inputs``; ``started`` is the request's arrival (``time.perf_counter``)."""
        rows = 0
        outputs: Tensors | None = None
        error: BaseException | None = None
        try:
            rows, future = self.start(model, inputs, info, started)
            outputs = await future
            return outputs
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.finish(model, info, inputs, rows, started, outputs, error)

    def reject(
        self, model: LoadedModel, info: RequestInfo, started: float, exc: GatewayError
    ) -> None:
        """Account for a request refused before it reached ``infer`` (e.g. a malformed body)."""
        latency_s = time.perf_counter() - started
        status = _status(exc)
        if status == "invalid":  # e.g. rows without the features this version names
            self.traffic.stats.record(model.name, model.variant, latency_s, False, True)
        self._finish(model, info, latency_s, "primary", status, exc, 0, None, None)

    def record_shadow(
        self,
        model: LoadedModel,
        info: RequestInfo,
        inputs: Tensors,
        outputs: Tensors | None,
        rows: int,
        latency_s: float,
        error: GatewayError | None,
        comparison: dict[str, object],
    ) -> None:
        """Log a shadow's answer (never returned to the caller) with its comparison."""
        status: Status = "ok" if error is None else _status(error)
        self._finish(
            model, info, latency_s, "shadow", status, error, rows, inputs, outputs, comparison
        )

    def _finish(
        self,
        model: LoadedModel,
        info: RequestInfo,
        latency_s: float,
        role: str,
        status: Status,
        error: GatewayError | None,
        rows: int,
        inputs: Tensors | None,
        outputs: Tensors | None,
        comparison: dict[str, object] | None = None,
    ) -> None:
        if role == "primary":
            labels = (model.name, model.version, model.variant, _OUTCOME[status])
            children = self._children.get(labels)
            if children is None:  # labels() takes a lock and a dict walk: once per series
                children = (
                    self._metrics.requests.labels(*labels),
                    self._metrics.request_duration.labels(*labels),
                )
                self._children[labels] = children
            children[0].inc()
            children[1].observe(latency_s)
        if self._feature_log is None:
            return
        if not self._records.sampled(info):
            self._metrics.feature_log.dropped("sampled_out")
            return
        if inputs is not None and model.input_features:  # log features by their own names
            inputs = {model.input_features.get(k, k): v for k, v in inputs.items()}
        # The registered model's name: what the monitor finds the reference profile under.
        registered = model.ref.name
        record = self._records.build(
            info,
            model=registered,
            version=model.version,
            variant=model.variant,
            role=role,
            feature_input=model.feature_input,
            feature_names=model.feature_names,
            inputs=inputs if status != "invalid" else None,
            outputs=outputs,
            rows=rows,
            latency_s=latency_s,
            status=status,
            error=str(error) if error is not None else None,
        )
        if comparison is not None:
            record["comparison"] = comparison
        self._feature_log.submit(registered.encode(), record)


# Metric outcome label for each record status.
_OUTCOME: dict[Status, str] = {
    "ok": "success",
    "invalid": "invalid",
    "rejected": "rejected",
    "timeout": "timeout",
    "error": "error",
    "cancelled": "cancelled",
}


def _status(exc: GatewayError) -> Status:
    if isinstance(exc, InvalidInputError):
        return "invalid"
    if isinstance(exc, DeadlineExceededError):
        return "timeout"
    if isinstance(exc, NotReadyError):
        return "rejected"
    return "error"


def validate_inputs(signature: Signature, inputs: Tensors, allow_nan: bool) -> int:
    """Check names, datatypes, shapes and values against the signature; return the row count."""
    if len(inputs) != len(signature.checks) or not signature.input_names.issuperset(inputs):
        expected = [spec.name for spec in signature.inputs]
        unexpected = sorted(set(inputs) - set(expected))
        missing = [name for name in expected if name not in inputs]
        parts = []
        if missing:
            parts.append(f"missing inputs {missing}")
        if unexpected:
            parts.append(f"unknown inputs {unexpected}")
        raise InvalidInputError(f"{' and '.join(parts)}; the model takes {expected}")
    rows: int | None = None
    for check in signature.checks:
        array = inputs[check.name]
        if array.dtype != check.dtype and datatype_of(array) != check.datatype:
            raise InvalidInputError(
                f"input {check.name!r}: datatype {datatype_of(array)}, the model takes "
                f"{check.datatype}"
            )
        shape = array.shape
        if len(shape) != check.rank or any(shape[axis] != size for axis, size in check.fixed):
            spec = signature.input(check.name)
            assert spec is not None
            raise InvalidInputError(
                f"input {check.name!r}: shape {list(shape)}, the model takes "
                f"{list(spec.shape)} (-1 is any size)"
            )
        if check.has_batch_dim:
            if rows is None:
                rows = shape[0]
            elif shape[0] != rows:
                raise InvalidInputError(
                    f"input {check.name!r} has {shape[0]} rows, other inputs have {rows}"
                )
        # The sum is finite unless a value is NaN or infinite (or the sum overflows, which the
        # exact check then clears): one reduction instead of an elementwise test on the hot path.
        if (
            not allow_nan
            and array.dtype.kind == "f"
            and not math.isfinite(array.sum())
            and not np.isfinite(array).all()
        ):
            raise InvalidInputError(_not_finite(check.name, array))
    if rows == 0:
        raise InvalidInputError("the request holds no rows")
    return rows if rows is not None else 1


def _not_finite(name: str, array: np.ndarray) -> str:
    """Where ``array`` first holds NaN or infinity, and how a caller's JSON comes to: the
    caller sent neither (JSON has no such values), so the error says what becomes them."""
    at = [int(i) for i in np.argwhere(~np.isfinite(array))[0]]
    return (
        f"input {name!r} holds NaN or infinite values, the first at index {at} (null is NaN, "
        f"and a number beyond {datatype_of(array)}'s range, 1e300 in FP32 say, is infinite)"
    )
