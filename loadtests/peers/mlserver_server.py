# mypy: ignore-errors
"""Benchmark peer: Seldon MLServer 1.7.1 with a custom onnxruntime runtime.

``python mlserver_server.py --model FILE --name mlp --port P [--max-batch-size 64]
[--max-batch-delay-ms 2] [--parallel-workers 0]``

``OnnxRuntimeModel`` is an ``mlserver.MLModel`` subclass around one onnxruntime session (one
intra-op and one inter-op thread, CPU provider); input and output names and datatypes come from
the session. The server is started programmatically (``MLServer(Settings(...))`` plus one
``ModelSettings``), which is what ``mlserver start DIR`` does after reading ``settings.json`` and
``model-settings.json``.

- Batching: MLServer's adaptive batching, ``max_batch_size`` from the flag and
  ``max_batch_time = delay / 1000`` seconds. The batcher merges the queued requests into one
  request (rows concatenated along the first axis) for one ``predict`` call and splits the
  response. Note how it waits: the first request of a batch always waits the whole
  ``max_batch_time`` unless ``max_batch_size`` requests arrive earlier, so at light load every
  request pays the full delay; the batcher's queue holds at most ``max_batch_size`` requests and
  later handlers wait to enqueue. Requests are merged before the runtime sees them, so one
  invalid request in a batch fails that whole batch (every member gets the same 400).
- Ready: ``GET /v2/health/ready`` (200 once the model is loaded). Infer:
  ``POST /v2/models/NAME/infer``, Open Inference Protocol v2 JSON, served by MLServer natively.
  Outputs keep the session's shapes (``label`` ``[N]`` INT64, ``probabilities`` ``[N, 2]`` FP32).
- ``parallel_workers = 0`` by default: inference runs in the server's own process, on its event
  loop, like MLServer's bundled runtimes do when parallel inference is off. MLServer's default
  (1) moves inference into a separate worker process and sends every batch to it and back by
  pickling over multiprocessing queues; that buys overlap of HTTP work and inference only when
  there is a second core, and the harness pins everything to one core, where it only adds
  serialisation and context switches. ``--parallel-workers N`` is there to check that claim.
- Tuned: ``debug=False`` (MLServer's default ``True`` logs every request and sets DEBUG level);
  loggers at WARNING; metrics off (``metrics_endpoint=None`` removes both the metrics server,
  default port 8082, and the Prometheus middleware on every REST request); GZip middleware off
  (answers are a few hundred bytes and clients here do not ask for gzip). MLServer always starts
  its gRPC server too; it gets an ephemeral port (``grpc_port=0``) on 127.0.0.1 so it never
  collides with another server. MLServer runs on uvloop, as its CLI does. MLServer depends on
  plain ``uvicorn``, which then parses HTTP in pure Python (h11); the requirements add
  ``httptools``, which uvicorn picks by itself (KServe gets it through ``uvicorn[standard]``);
  on the cheap model that roughly doubled the rate MLServer sustains here.
- SIGTERM/SIGINT/SIGQUIT are handled by MLServer: it stops the gRPC and REST servers (and the
  worker processes when ``--parallel-workers`` > 0) and the process exits, within about two
  seconds. Start-up to ready takes one to two seconds (about three with a worker process).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile

import numpy as np
import onnxruntime as ort
from mlserver import MLModel, MLServer
from mlserver.errors import InferenceError
from mlserver.settings import ModelParameters, ModelSettings, Settings
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput
from mlserver.utils import install_uvloop_event_loop

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

_QUIET = {"level": "WARNING", "handlers": ["stderr"], "propagate": False}
# Used by MLServer for its own loggers and handed to uvicorn as its ``log_config``.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {name: _QUIET for name in ("mlserver", "uvicorn", "uvicorn.error")}
    | {"uvicorn.access": {**_QUIET, "handlers": []}},
    "root": {"level": "WARNING", "handlers": ["stderr"]},
}


class _TensorSpec:
    """Name, v2 datatype, numpy dtype and shape (``None`` for a free dimension) of a tensor."""

    def __init__(self, node: ort.NodeArg) -> None:
        if node.type not in _ORT_TYPES:
            raise ValueError(f"tensor {node.name!r}: unsupported onnxruntime type {node.type}")
        self.name: str = node.name
        self.datatype, self.dtype = _ORT_TYPES[node.type]
        self.shape: list[int | None] = [d if isinstance(d, int) else None for d in node.shape]


class OnnxRuntimeModel(MLModel):
    """An MLServer runtime around one onnxruntime session; ``parameters.uri`` is the file."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {node.name: _TensorSpec(node) for node in self._session.get_inputs()}
        self._outputs = [_TensorSpec(node) for node in self._session.get_outputs()]
        self._output_names = [spec.name for spec in self._outputs]
        return True

    def _decode(self, request_input: RequestInput) -> np.ndarray:
        spec = self._inputs.get(request_input.name)
        if spec is None:
            raise InferenceError(f"unknown input {request_input.name!r}")
        if request_input.datatype != spec.datatype:
            raise InferenceError(
                f"input {spec.name!r}: datatype {request_input.datatype}, expected {spec.datatype}"
            )
        shape = list(request_input.shape)
        if len(shape) != len(spec.shape) or any(
            want is not None and got != want for got, want in zip(shape, spec.shape, strict=True)
        ):
            raise InferenceError(f"input {spec.name!r}: shape {shape}, expected {spec.shape}")
        data = getattr(request_input.data, "root", request_input.data)
        try:
            array = np.asarray(data, dtype=spec.dtype)
        except (TypeError, ValueError) as exc:
            raise InferenceError(f"input {spec.name!r}: {exc}") from exc
        if array.size != math.prod(shape):
            raise InferenceError(f"input {spec.name!r}: {array.size} values for shape {shape}")
        return array.reshape(shape)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {
            request_input.name: self._decode(request_input) for request_input in payload.inputs
        }
        missing = self._inputs.keys() - feeds.keys()
        if missing:
            raise InferenceError(f"missing inputs: {sorted(missing)}")
        results = self._session.run(self._output_names, feeds)
        outputs = [
            ResponseOutput(
                name=spec.name,
                shape=list(result.shape),
                datatype=spec.datatype,
                data=result.ravel().tolist(),
            )
            for spec, result in zip(self._outputs, results, strict=True)
        ]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="path of the .onnx file")
    parser.add_argument("--name", required=True, help="model name in the URL")
    parser.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0)
    parser.add_argument(
        "--parallel-workers",
        type=int,
        default=0,
        help="MLServer inference worker processes (0: infer in the server process)",
    )
    return parser.parse_args()


async def serve(args: argparse.Namespace, workdir: str) -> None:
    settings = Settings(
        debug=False,
        host="127.0.0.1",
        http_port=args.port,
        grpc_port=0,
        parallel_workers=args.parallel_workers,
        metrics_endpoint=None,
        gzip_enabled=False,
        logging_settings=LOG_CONFIG,
        # Keep MLServer's scratch folders (model repository root, environments, multiprocess
        # metrics) out of the current directory.
        model_repository_root=workdir,
        environments_dir=f"{workdir}/envs",
        metrics_dir=f"{workdir}/metrics",
        load_models_at_startup=False,
    )
    model_settings = ModelSettings(
        name=args.name,
        implementation=f"{OnnxRuntimeModel.__module__}.{OnnxRuntimeModel.__qualname__}",
        max_batch_size=args.max_batch_size,
        max_batch_time=args.max_batch_delay_ms / 1000.0,
        parameters=ModelParameters(uri=args.model),
    )
    # MLServer installs its signal handlers on the running loop, so build it inside the loop.
    server = MLServer(settings)
    await server.start([model_settings])


def main() -> None:
    args = parse_args()
    install_uvloop_event_loop()
    with tempfile.TemporaryDirectory(prefix="mlserver-peer-") as workdir:
        asyncio.run(serve(args, workdir))


if __name__ == "__main__":
    main()
