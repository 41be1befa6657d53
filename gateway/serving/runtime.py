"""One loaded ONNX model: an onnxruntime session, its signature, warm-up and a run call.

onnxruntime is imported when the first runtime is built, not with this module: the parse
processes import ``gateway.serving`` (for signatures) and would carry it for nothing.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gateway.errors import ModelExecutionError, ModelLoadError
from gateway.serving.signature import ONNX_TO_DATATYPE, Signature, TensorSpec
from registry_client import ModelVersion

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["ModelRuntime", "RuntimeOptions", "release_memory"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How onnxruntime runs a model."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)


class ModelRuntime:
    """A model version loaded into onnxruntime. ``run`` is blocking: call it off the event loop."""

    def __init__(self, version: ModelVersion, options: RuntimeOptions) -> None:
        import onnxruntime as ort

        self.version = version
        self.providers = _pick_providers(options.execution_providers)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime would print each failed run to stderr; the gateway logs and reports it.
        session_options.log_severity_level = 4
        self._session: ort.InferenceSession | None
        try:
            self._session = ort.InferenceSession(
                str(version.model_file), sess_options=session_options, providers=self.providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelLoadError(
                f"model {version.name} version {version.version}: onnxruntime cannot load "
                f"model.onnx: {exc}"
            ) from exc
        self.signature = Signature(
            inputs=tuple(_spec(arg, version) for arg in self._session.get_inputs()),
            outputs=tuple(_spec(arg, version) for arg in self._session.get_outputs()),
        )
        self._output_names = [o.name for o in self.signature.outputs]
        _check_feature_input(version, self.signature)

    def close(self) -> None:
        """Drop the onnxruntime session (its memory goes once no batch runs it); later runs
        fail. For an unloaded version: whatever still refers to it holds no model memory."""
        self._session = None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named input arrays and return every output by name."""
        session = self._session
        if session is None:
            raise ModelExecutionError(
                f"model {self.version.name} version {self.version.version} is unloaded"
            )
        try:
            results = session.run(self._output_names, inputs)
        except Exception as exc:
            error = ModelExecutionError(
                f"model {self.version.name} version {self.version.version} failed at run time: "
                f"{exc}"
            )
            log.warning("%s", error)
            raise error from exc
        return dict(zip(self._output_names, results, strict=True))

    def warm_up(self, batch_sizes: Sequence[int]) -> dict[int, float]:
        """Run twice at each batch size so the first requests do not pay for allocation.

        Returns the seconds the second run of each batch size took (the steady cost, which
        decides whether batches may run on the event loop); raises ModelLoadError when the
        model fails.
        """
        timings: dict[int, float] = {}
        sizes = sorted(set(batch_sizes)) if self.signature.batchable else [1]
        for rows in sizes:
            try:
                inputs = {spec.name: _example(spec, rows) for spec in self.signature.inputs}
            except (MemoryError, ValueError) as exc:  # more than this machine can hold
                raise ModelLoadError(
                    f"warm-up at batch size {rows}: cannot make its inputs: {exc}"
                ) from exc
            for _ in range(2):
                start = time.perf_counter()
                try:
                    self.run(inputs)
                except ModelExecutionError as exc:
                    raise ModelLoadError(f"warm-up at batch size {rows} failed: {exc}") from exc
                timings[rows] = time.perf_counter() - start
        return timings


def _check_feature_input(version: ModelVersion, signature: Signature) -> None:
    """The input the metadata says holds the features is one of the model's, of their width:
    otherwise named features would not reach the model (ModelLoadError)."""
    name = version.metadata.feature_input
    if name is None or not version.metadata.features:
        return
    spec = signature.input(name)
    where = f"model {version.name} version {version.version}: metadata.json's feature_input"
    if spec is None:
        inputs = [s.name for s in signature.inputs]
        raise ModelLoadError(f"{where} {name!r} is not an input of model.onnx (it has {inputs})")
    count = len(version.metadata.features)
    if len(spec.shape) != 2 or spec.shape[1] not in (-1, count):
        raise ModelLoadError(
            f"{where} {name!r} has shape {list(spec.shape)}, not [-1, {count}] for its "
            f"{count} features"
        )


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to hand back this way
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Hand the memory that unloaded sessions freed back to the OS (blocking: call it off the
    event loop). glibc keeps the freed blocks in its per-thread arenas: without this, a process
    that swapped a 113 MB model in and out four times held 580 MB instead of 108 MB."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _pick_providers(wanted: Sequence[str]) -> list[str]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    skipped = [p for p in wanted if p not in available]
    if skipped:
        log.warning("execution providers %s are not in this onnxruntime; using %s", skipped, chosen)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _spec(arg: ort.NodeArg, version: ModelVersion) -> TensorSpec:
    datatype = ONNX_TO_DATATYPE.get(arg.type)
    if datatype is None:
        raise ModelLoadError(
            f"model {version.name} version {version.version}: {arg.name!r} has type {arg.type}, "
            "which the gateway cannot serve (only tensors; for scikit-learn classifiers convert "
            "with zipmap disabled)"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def _example(spec: TensorSpec, rows: int) -> np.ndarray:
    shape = tuple(rows if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(spec.shape))
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)
