"""The core of one prediction: check inputs against the signature, queue, run, measure.

Every protocol's endpoint calls ``InferenceService.infer``; nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from gateway.deployments import LoadedModel, ModelManager
from gateway.errors import (
    DeadlineExceededError,
    GatewayError,
    InvalidInputError,
    ModelExecutionError,
    NotReadyError,
)
from gateway.metrics import GatewayMetrics
from gateway.signature import Signature, datatype_of

__all__ = ["InferenceService", "validate_inputs"]

Tensors = dict[str, np.ndarray]


class InferenceService:
    """Runs predictions against the served models and records their outcome."""

    def __init__(self, manager: ModelManager, metrics: GatewayMetrics, allow_nan: bool) -> None:
        self.manager = manager
        self._metrics = metrics
        self._allow_nan = allow_nan

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        """The loaded model serving ``name`` (raises UnknownModelError / NotReadyError)."""
        return self.manager.get(name, version)

    async def infer(
        self,
        model: LoadedModel,
        inputs: Tensors,
        started: float,
        variant: str = "default",
    ) -> Tensors:
        """Predict for ``inputs``; ``started`` is the request's arrival (``time.perf_counter``)."""
        outcome = "error"
        try:
            rows = validate_inputs(model.signature, inputs, self._allow_nan)
            deadline = asyncio.get_running_loop().time() + model.batching.timeout_s
            outputs = await model.batcher.submit(inputs, rows, deadline)
            outcome = "success"
            self._metrics.rows.labels(model.name, model.version).inc(rows)
            return outputs
        except InvalidInputError:
            outcome = "invalid"
            raise
        except DeadlineExceededError:
            outcome = "timeout"
            raise
        except NotReadyError:
            outcome = "rejected"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except (ModelExecutionError, GatewayError):
            outcome = "error"
            raise
        finally:
            labels = (model.name, model.version, variant, outcome)
            self._metrics.requests.labels(*labels).inc()
            self._metrics.request_duration.labels(*labels).observe(time.perf_counter() - started)


def validate_inputs(signature: Signature, inputs: Tensors, allow_nan: bool) -> int:
    """Check names, datatypes, shapes and values against the signature; return the row count."""
    if len(inputs) != len(signature.inputs) or any(
        signature.input(name) is None for name in inputs
    ):
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
    for spec in signature.inputs:
        array = inputs[spec.name]
        datatype = datatype_of(array)
        if datatype != spec.datatype:
            raise InvalidInputError(
                f"input {spec.name!r}: datatype {datatype}, the model takes {spec.datatype}"
            )
        if array.ndim != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(array.shape, spec.shape, strict=True)
        ):
            raise InvalidInputError(
                f"input {spec.name!r}: shape {list(array.shape)}, the model takes "
                f"{list(spec.shape)} (-1 is any size)"
            )
        if spec.has_batch_dim:
            if rows is None:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise InvalidInputError(
                    f"input {spec.name!r} has {array.shape[0]} rows, other inputs have {rows}"
                )
        if not allow_nan and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInputError(f"input {spec.name!r} holds NaN or infinite values")
    if rows == 0:
        raise InvalidInputError("the request holds no rows")
    return rows if rows is not None else 1
