# mypy: ignore-errors
"""Benchmark peer: KServe 0.21.0's Python model server (``kserve.ModelServer``).

``python kserve_server.py --model FILE --name mlp --port P [--max-batch-size 64]
[--max-batch-delay-ms 2]``

``OnnxRuntimeModel`` is a ``kserve.Model`` subclass around one onnxruntime session (one intra-op
and one inter-op thread, CPU provider); input and output names and datatypes come from the
session. ``kserve.ModelServer`` serves it over REST with KServe's own FastAPI/uvicorn app.

- Batching: none. The kserve Python package (0.21.0 checked) has no request batcher: KServe's
  batcher is the Go "model agent" sidecar that the KServe controller injects into an
  InferenceService pod on Kubernetes (``spec.predictor.batcher.maxBatchSize/maxLatency``; the
  Python package only carries that CRD field as ``V1beta1Batcher``), and it batches only the v1
  protocol. So every request is one ``predict`` call, one ``session.run`` on its own rows, which
  is what a KServe Python predictor does out of a cluster. ``--max-batch-size`` and
  ``--max-batch-delay-ms`` are accepted, so the harness can start every peer alike, and ignored.
- Ready: ``GET /v2/health/ready`` (200 once the model is loaded). Infer:
  ``POST /v2/models/NAME/infer``, Open Inference Protocol v2 JSON, served by KServe natively.
  Outputs keep the session's shapes (``label`` ``[N]`` INT64, ``probabilities`` ``[N, 2]`` FP32).
- ``predict`` is a plain function, so KServe calls it on the event loop; one uvicorn worker
  (``workers=1``, KServe's default: more workers are more processes on the one core).
- Tuned: gRPC server off (``enable_grpc=False``; it would take port 8081 and nothing uses it);
  per-request latency log line off (``enable_latency_logging=False``, on by default); KServe and
  uvicorn loggers at WARNING, so no access log. KServe always binds ``0.0.0.0`` (hard-coded in
  ``kserve.protocol.rest.server.RESTServer``); ``_LoopbackRESTServer`` sets uvicorn's host to
  127.0.0.1 before it binds. KServe's timing middleware and Prometheus histograms on every
  request cannot be switched off and are part of what is measured. uvloop is used (KServe's
  ``event_loop="auto"``).
- ``kserve.model_server`` parses ``sys.argv`` when it is imported (``parse_known_args``, with
  prefix matching, so our ``--model`` also reads as its ``--model_name``); every setting it would
  take from there is passed to ``ModelServer`` explicitly instead, so that parse changes nothing.
- KServe logs every 4xx answer at ERROR with a traceback (its exception handlers do); only bad
  requests pay that.
- SIGTERM/SIGINT: uvicorn shuts the server down and the process exits (status 0, within about
  two seconds); there are no child processes. Start-up to ready takes 1.5 to 3.5 seconds,
  mostly imports.
"""

from __future__ import annotations

import argparse
import copy
import warnings

import kserve
import kserve.logging
import kserve.model_server
import numpy as np
import onnxruntime as ort
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.server import RESTServer
from kserve.utils.utils import generate_uuid

# onnxruntime tensor types -> (v2 datatype, numpy dtype).
_ORT_TYPES: dict[str, tuple[str, type[np.generic]]] = {
    "tensor(float)": ("FP32", np.float32),
    "tensor(double)": ("FP64", np.float64),
    "tensor(float16)": ("FP16", np.float16),
    "tensor(int64)": ("INT64", np.int64),
    "tensor(int32)": ("INT32", np.int32),
    "tensor(int8)": ("INT8", np.int8),
    "tensor(uint8)": ("UINT8", np.uint8),
    "tensor(bool)": ("BOOL", np.bool_),
}


class _TensorSpec:
    """Name, v2 datatype, numpy dtype and shape (``None`` for a free dimension) of a tensor."""

    def __init__(self, node: ort.NodeArg) -> None:
        if node.type not in _ORT_TYPES:
            raise ValueError(f"tensor {node.name!r}: unsupported onnxruntime type {node.type}")
        self.name: str = node.name
        self.datatype, self.dtype = _ORT_TYPES[node.type]
        self.shape: list[int | None] = [d if isinstance(d, int) else None for d in node.shape]


class OnnxRuntimeModel(kserve.Model):
    """A KServe predictor around one onnxruntime session."""

    def __init__(self, name: str, model_path: str) -> None:
        super().__init__(name)
        self._model_path = model_path

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            self._model_path, options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {node.name: _TensorSpec(node) for node in self._session.get_inputs()}
        self._outputs = [_TensorSpec(node) for node in self._session.get_outputs()]
        self._output_names = [spec.name for spec in self._outputs]
        self.ready = True
        return self.ready

    def _decode(self, infer_input: InferInput) -> np.ndarray:
        spec = self._inputs.get(infer_input.name)
        if spec is None:
            raise InvalidInput(f"unknown input {infer_input.name!r}")
        if infer_input.datatype != spec.datatype:
            raise InvalidInput(
                f"input {spec.name!r}: datatype {infer_input.datatype}, expected {spec.datatype}"
            )
        shape = list(infer_input.shape)
        if len(shape) != len(spec.shape) or any(
            want is not None and got != want for got, want in zip(shape, spec.shape, strict=True)
        ):
            raise InvalidInput(f"input {spec.name!r}: shape {shape}, expected {spec.shape}")
        try:
            return infer_input.as_numpy()  # also checks the value count against the shape
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"input {spec.name!r}: {exc}") from exc

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        feeds = {tensor.name: self._decode(tensor) for tensor in payload.inputs}
        missing = self._inputs.keys() - feeds.keys()
        if missing:
            raise InvalidInput(f"missing inputs: {sorted(missing)}")
        results = self._session.run(self._output_names, feeds)
        outputs = [
            # KServe turns the array into JSON numbers when it writes the REST answer.
            InferOutput(
                name=spec.name, shape=list(result.shape), datatype=spec.datatype, data=result
            )
            for spec, result in zip(self._outputs, results, strict=True)
        ]
        return InferResponse(
            response_id=payload.id or generate_uuid(), model_name=self.name, infer_outputs=outputs
        )


class _LoopbackRESTServer(RESTServer):
    """KServe's REST server, listening on 127.0.0.1 instead of its hard-coded 0.0.0.0."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = "127.0.0.1"


def quiet_logging() -> None:
    """KServe's own logging set-up with every logger at WARNING (no access log, no info lines)."""
    config = copy.deepcopy(kserve.logging.KSERVE_LOG_CONFIG)
    for logger in config["loggers"].values():
        logger["level"] = "WARNING"
    kserve.logging.configure_logging(config)
    # FastAPI 0.165 warns, once, that KServe's ORJSONResponse default is deprecated.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="path of the .onnx file")
    parser.add_argument("--name", required=True, help="model name in the URL")
    parser.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
    parser.add_argument("--max-batch-size", type=int, default=64, help="ignored: no batcher")
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0, help="ignored")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    quiet_logging()
    model = OnnxRuntimeModel(args.name, args.model)
    model.load()
    kserve.model_server.RESTServer = _LoopbackRESTServer
    server = kserve.ModelServer(
        http_port=args.port,
        workers=1,
        enable_grpc=False,
        enable_docs_url=False,
        enable_latency_logging=False,
        access_log_format=None,
        event_loop="auto",
        grace_period=5,
    )
    server.start([model])


if __name__ == "__main__":
    main()
