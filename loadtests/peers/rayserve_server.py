# mypy: ignore-errors
"""Benchmark peer ``rayserve``: an ONNX model behind Ray Serve (ray[serve] 2.60.0), one replica.

``python rayserve_server.py --model FILE --name NAME --port PORT [--max-batch-size 64]
[--max-batch-delay-ms 2]``

- Infer: ``POST /v2/models/{name}/infer`` with the Open Inference Protocol v2 JSON body (one input
  tensor, ``[rows, features...]``); answers v2 JSON (``model_name`` and every model output). Ray
  Serve has no v2 support of its own: the deployment's ``__call__`` gets Serve's Starlette request,
  parses the body with ``request.json()`` and checks it against the session's input (400 if it
  does not fit). Any other path answers 404.
- Ready: ``GET /v2/health/ready``, answered by the replica itself, so it is 200 only once the
  replica has loaded the model and the proxy routes to it. Start-up takes about 10 s (8 to 18 s
  seen on a shared machine: Ray's GCS, raylet and agents, then Serve's controller, proxy and
  replica).
- Batching: ``@serve.batch`` with ``max_batch_size`` counted in rows (``batch_size_fn``) and
  ``batch_wait_timeout_s`` = ``--max-batch-delay-ms``; one batch at a time. A request of more rows
  than ``--max-batch-size`` is refused with 400 (``@serve.batch`` cannot split one).
- Tuned: ``max_ongoing_requests`` = 4 x max batch size (Serve's default of 5 would cap a batch
  at 5 requests; 4 x lets the next batches gather while one runs). Otherwise Serve's defaults:
  the HTTP proxy actor in front of the replica actor, which is Serve's architecture (the direct
  ingress of ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` is experimental and binds ports of its own), and
  user code on its own event-loop thread. ``RAY_SERVE_PROXY_USE_GRPC=1`` (proxy to replica over
  gRPC) cut the CPU per request by 5 to 20% in a quick test, within the noise of a shared machine,
  so it is left off. Each request costs Ray Serve about 3 ms of CPU in the proxy and 3 ms in the
  replica on one core, which bounds its rate far below the model's.
- Resources: a local Ray started here (``address="local"``) with 1 CPU, no dashboard, a 100 MB
  object store; the replica reserves that CPU. One replica: more would not help on one core.
- Logging: Ray and Serve at WARNING, no access log, worker output not forwarded to the driver
  (Ray still writes its logs under ``/tmp/ray/session_*``).
- Stopping: this process makes itself a process-group leader before it starts Ray, so a signal to
  the group reaches Ray's GCS, raylet and agents too; Ray's worker processes (Serve's controller,
  proxy and replica) put themselves in process groups of their own, so on SIGTERM or SIGINT this
  process notes every process below it (from /proc), ends Ray (``ray.shutdown()``, which ends
  Serve with it), sends SIGTERM to any of them still running and SIGKILL after 5 s, and exits 0.
  About 3 s after a SIGTERM to the pid, 13 s after one to the whole group (Ray's driver then waits
  on the GCS the signal already ended).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from ray.serve.config import HTTPOptions
from ray.serve.schema import LoggingConfig
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

# ONNX Runtime element types and v2 datatype names, for the types a tabular model uses.
_ORT_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(bool)": "BOOL",
}
_V2_TO_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
_NUMPY_TO_V2 = {np.dtype(t): name for name, t in _V2_TO_NUMPY.items()} | {np.dtype(bool): "BOOL"}
_QUIET = LoggingConfig(log_level="WARNING", enable_access_log=False)


def _rows(arrays: list[np.ndarray]) -> int:
    return sum(a.shape[0] for a in arrays)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, logging_config=_QUIET)
class V2Model:
    def __init__(
        self, model_path: str, name: str, max_batch_size: int, batch_wait_timeout_s: float
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{model_path} has {len(inputs)} inputs, this peer takes one")
        self.input_name = inputs[0].name
        self.input_datatype = _ORT_TO_V2[inputs[0].type]
        self.input_dtype = _V2_TO_NUMPY[self.input_datatype]
        self.features = [d if isinstance(d, int) else None for d in inputs[0].shape[1:]]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.name = name
        self.infer_path = f"/v2/models/{name}/infer"
        self.max_batch_size = max_batch_size
        self.run_batch.set_max_batch_size(max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        if path == "/v2/health/ready" and request.method == "GET":
            return Response(status_code=200)
        if path != self.infer_path:
            return JSONResponse({"error": f"no route {path}"}, status_code=404)
        if request.method != "POST":
            return JSONResponse({"error": "POST only"}, status_code=405)
        try:
            array = self.parse(await request.json())
        except (ValueError, TypeError, KeyError) as exc:
            return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
        results = await self.run_batch(array)
        outputs = [
            {
                "name": name,
                "datatype": _NUMPY_TO_V2[value.dtype],
                "shape": list(value.shape),
                "data": value.reshape(-1).tolist(),
            }
            for name, value in zip(self.output_names, results, strict=True)
        ]
        return JSONResponse({"model_name": self.name, "outputs": outputs})

    def parse(self, body: Any) -> np.ndarray:
        """The one input tensor of a v2 body as an array of [rows, features...]."""
        tensors = body["inputs"]
        if not isinstance(tensors, list) or len(tensors) != 1:
            raise ValueError(f"expected one input tensor, {self.input_name!r}")
        tensor = tensors[0]
        if tensor["name"] != self.input_name:
            raise ValueError(f"unknown input {tensor['name']!r}, expected {self.input_name!r}")
        if tensor["datatype"] != self.input_datatype:
            raise ValueError(f"{self.input_name!r} is {self.input_datatype}")
        shape = tensor["shape"]
        if not isinstance(shape, list) or len(shape) != len(self.features) + 1:
            raise ValueError(f"shape {shape} is not [rows, {len(self.features)} dims]")
        if any(
            want is not None and got != want
            for got, want in zip(shape[1:], self.features, strict=True)
        ):
            raise ValueError(f"shape {shape} does not fit {self.features}")
        if not 0 < shape[0] <= self.max_batch_size:
            raise ValueError(f"{shape[0]} rows, 1 to {self.max_batch_size} taken")
        return np.asarray(tensor["data"], dtype=self.input_dtype).reshape(shape)

    # The settings here are replaced in __init__ by the command line's.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, batch_size_fn=_rows)
    async def run_batch(self, arrays: list[np.ndarray]) -> list[list[np.ndarray]]:
        """One session run for the rows of every request in the batch, split back per request."""
        results = self.session.run(self.output_names, {self.input_name: np.concatenate(arrays)})
        bounds = np.cumsum([a.shape[0] for a in arrays])[:-1]
        return [list(parts) for parts in zip(*(np.split(r, bounds) for r in results), strict=True)]


def _descendants(root: int) -> dict[int, str]:
    """Every process below ``root`` (children, their children...), as pid: start time, read from
    /proc (Linux). The start time tells a process from a later one given the same pid."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))):
            children.setdefault(int(fields[1]), []).append(int(entry))
            started[int(entry)] = fields[19]
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = started[child]
            todo.append(child)
    return found


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from the field after the command name (state, ppid, pgrp...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _end_all(processes: dict[int, str], grace_s: float) -> None:
    """SIGTERM each of ``processes`` still running, then SIGKILL those left after ``grace_s``."""

    def running() -> list[int]:
        return [p for p, t in processes.items() if (f := _stat(p)) and f[19] == t and f[0] != "Z"]

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        for pid in running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while running() and time.monotonic() < deadline:
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0)
    args = parser.parse_args()

    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    # ray.init installs its own SIGTERM handler (sys.exit); ours replaces it from here on.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(
            http_options=HTTPOptions(host="127.0.0.1", port=args.port), logging_config=_QUIET
        )
        app = V2Model.options(max_ongoing_requests=4 * args.max_batch_size).bind(
            str(Path(args.model).resolve()),
            args.name,
            args.max_batch_size,
            args.max_batch_delay_ms / 1000,
        )
        serve.run(app, name=args.name, route_prefix="/", logging_config=_QUIET)
        stop.wait()
    finally:
        ray_processes = _descendants(os.getpid())
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Not serve.shutdown(): it waits up to 30 s for a controller that a SIGTERM sent to the
        # whole group has already ended. Ending this Ray instance ends Serve with it.
        ray.shutdown()
        _end_all(ray_processes, grace_s=5.0)


if __name__ == "__main__":
    main()
