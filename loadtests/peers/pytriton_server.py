# mypy: ignore-errors
"""Benchmark peer: NVIDIA PyTriton 0.7.0, which runs the Triton Inference Server 2.51.0 binary
shipped in its wheel and serves a Python function through it.

``python pytriton_server.py --model FILE --name mlp --port P [--max-batch-size 64]
[--max-batch-delay-ms 2] [--http-threads 1]``

An onnxruntime session (one intra-op and one inter-op thread, CPU provider) is bound with
``Triton.bind`` as a ``@batch`` function. Triton's own dynamic batcher groups requests
(``ModelConfig(max_batch_size=...)``, ``DynamicBatcher(max_queue_delay_microseconds=1000 *
delay_ms)``) and ``@batch`` stacks each group into one ``[N, F]`` array for one ``session.run``.

- Ready: ``GET /v2/models/NAME/ready``. Not ``GET /v2/health/ready``: PyTriton starts Triton with
  no model and loads it afterwards through the model-control API, and Triton's readiness counts
  only loaded models, so that URL answers 200 a second or more before the model exists.
- Infer: ``POST /v2/models/NAME/infer``, Open Inference Protocol v2 JSON served by Triton itself.
  ``label`` comes back as ``[N, 1]`` INT64, ``probabilities`` as ``[N, 2]`` FP32: Triton refuses
  an empty per-row shape and PyTriton cannot declare a reshape, so ``[N]`` gets an axis (the data
  are the same). Triton answers 400 for a wrong input name, datatype or batch size, but 500 for
  a body that is not JSON or whose data do not fit its shape.
- Processes: this one starts ``tritonserver``, which starts its Python-backend stub (and that a
  multiprocessing resource tracker and manager). Each batch crosses tritonserver -> stub (shared
  memory) -> this process (ZeroMQ messages, tensors in shared memory) and back; that path is
  PyTriton's design and is part of what is measured (about 2 ms per batch here). One bound
  function means one model instance: batches run one at a time.
- Settings: HTTP on 127.0.0.1 only; gRPC and metrics off (unused, and their fixed default ports
  8001/8002 would clash with other servers); ``log_verbose=0``, though Triton still prints its
  start-up and shut-down banner (TritonConfig has no ``log_info`` switch), nothing per request.
  Triton's HTTP front-end runs 8 threads by default (``--http-thread-count``). Its handlers are
  event-driven and inference is dispatched asynchronously, so on one core more threads add only
  context switches; ``--http-threads`` defaults to 1 here. ``exit_timeout_secs=5`` bounds how
  long tritonserver waits for clients that keep connections open when stopping.
- Start-up: about 3 s to ready (tritonserver start, model load, stub start). SIGTERM or SIGINT
  (also during start-up) calls ``Triton.stop()``: SIGINT to tritonserver and a wait for it and
  the stub, then PyTriton's workspace is removed. Stopping takes 2 to 5 s.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

# onnxruntime's tensor type names -> numpy dtypes PyTriton maps onto Triton datatypes.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def _tensor(node: ort.NodeArg) -> Tensor:
    """A PyTriton tensor spec for one session input/output, without its leading batch axis.

    Triton rejects an empty ``dims``, so a per-row scalar (``label`` of shape ``[N]``) is
    declared as ``(1,)``; ``infer`` gives such outputs a trailing axis to match.
    """
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in node.shape[1:])
    return Tensor(name=node.name, dtype=_ORT_DTYPES[node.type], shape=dims or (1,))


def _use_this_libpython() -> None:
    """Make Triton's Python-backend stub embed the same libpython as this interpreter.

    The stub needs ``libpython3.X.so.1.0`` and its rpath does not lead to one, so the loader
    takes the system's (Debian 12: 3.11.2) while the stub runs this venv's standard library
    (pyenv 3.11.7 here). The two disagree and the model fails to load with ``'_thread.RLock'
    object has no attribute '_recursion_count'`` (triton-inference-server/pytriton#51). Putting
    this interpreter's library directory first on ``LD_LIBRARY_PATH``, which tritonserver and
    the stub inherit, fixes it; without a shared libpython nothing changes.
    """
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        current = os.environ.get("LD_LIBRARY_PATH")
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


class _Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler, also while PyTriton is still starting up."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def _check_port_free(port: int) -> None:
    """Fail now on a taken port: tritonserver would exit, but PyTriton waits 120 s for it."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def _session(model_path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="ONNX file")
    parser.add_argument("--name", required=True, help="model name in the v2 URLs")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0)
    parser.add_argument("--http-threads", type=int, default=1, help="Triton --http-thread-count")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    session = _session(args.model)
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    output_names = [o.name for o in outputs]

    @batch
    def infer(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        results = session.run(output_names, feeds)
        return {
            name: result.reshape(-1, 1) if result.ndim == 1 else result
            for name, result in zip(output_names, results, strict=True)
        }

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.port,
        http_thread_count=args.http_threads,
        allow_grpc=False,
        allow_metrics=False,
        log_verbose=0,
        exit_timeout_secs=5,
    )
    _check_port_free(args.port)
    _use_this_libpython()
    triton = Triton(config=config)
    triton.bind(
        model_name=args.name,
        infer_func=infer,
        inputs=[_tensor(i) for i in inputs],
        outputs=[_tensor(o) for o in outputs],
        config=ModelConfig(
            max_batch_size=args.max_batch_size,
            batcher=DynamicBatcher(
                max_queue_delay_microseconds=round(args.max_batch_delay_ms * 1000)
            ),
        ),
    )

    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        triton.run()  # starts tritonserver, loads the model, returns once it can serve
        while triton.is_alive():
            time.sleep(1.0)
        logging.error("tritonserver or the model's proxy stopped; exiting")
        return 1
    except _Stop:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        triton.stop()  # SIGINT to tritonserver, waits for it (and the stub), removes workspace


if __name__ == "__main__":
    sys.exit(main())
