# mypy: ignore-errors
"""Benchmark peer ``bentoml``: an ONNX model behind BentoML 1.4.40, one worker, adaptive batching.

``python bentoml_server.py --model FILE --name NAME --port PORT [--max-batch-size 64]
[--max-batch-delay-ms 2] [--max-latency-ms 60000]``

This process becomes ``bentoml serve bentoml_service:OnnxModel`` (exec, same pid): BentoML's
circus arbiter, which starts one service worker process (uvicorn on the arbiter's socket) and
stops it on SIGTERM. The service is in ``bentoml_service.py``.

- Infer: ``POST /v2/models/{name}/infer`` with the Open Inference Protocol v2 JSON body (one input
  tensor of ``[rows, features...]``) and ``Content-Type: application/json`` (BentoML reads other
  content types as form data and answers 400). The answer is BentoML's JSON for a batchable API
  returning a list, one v2 answer wrapped in a list:
  ``[{"model_name": ..., "outputs": [{"name": "label", ...}, {"name": "probabilities", ...}]}]``.
  A malformed or mismatched body answers 400; another model name 404.
- Ready: ``GET /readyz`` (BentoML's own; 200 once the worker has loaded the model and serves).
  Start-up takes about 2 s.
- Batching: BentoML's adaptive batching (the CorkDispatcher) with ``max_batch_size`` =
  ``--max-batch-size``, counted in request tensors (one per request). BentoML has no batch-delay
  setting: it holds a batch back for a time it adapts from recent waits and batch durations, so
  ``--max-batch-delay-ms`` is accepted for the harness's sake and not used. Its
  ``max_latency_ms`` (``--max-latency-ms``) is a deadline, not a delay: a queued request whose
  estimated latency reaches it is refused with 503. Left at BentoML's default (60 s), it refuses
  nothing; set to the benchmark's 50 ms p99 bound it refused requests from about 300 rows/s on the
  cheap model, and after an overload it can go on refusing most requests for a while (the
  dispatcher's estimates carry over from one load to the next: a fresh server per measured rate
  is fairer).
- Tuned: one worker (``workers=1``; on one core a second worker only competes for it), the batch
  function in BentoML's one-thread pool (its default for sync APIs), the answer's content type
  declared (otherwise BentoML builds a JSON schema of the return type for every answer), uvloop
  and httptools installed so that uvicorn uses them. Metrics stay on (BentoML's default; they also
  show the batch sizes at ``/metrics``: ``bentoml_service_adaptive_batch_size``).
- Logging: no access log; BentoML's loggers at WARNING (set in the service module); usage
  tracking off (``BENTOML_DO_NOT_TRACK``).
- Stopping: SIGTERM to this pid (the arbiter) stops the worker, then exits (about 2 s). The worker
  runs in a session of its own (circus starts it so), so only the arbiter stops it: a SIGKILL of
  the arbiter would leave the worker running.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0, help="not used")
    parser.add_argument("--max-latency-ms", type=int, default=60_000)
    args = parser.parse_args()

    # A worker that fails to load the model is restarted by circus again and again: fail here.
    if not Path(args.model).is_file():
        parser.error(f"no model file {args.model}")
    arguments = {
        "model": str(Path(args.model).resolve()),
        "name": args.name,
        "max_batch_size": args.max_batch_size,
        "max_latency_ms": args.max_latency_ms,
    }
    if any("," in str(value) for value in arguments.values()):
        parser.error("bentoml serve --arg cannot pass a value holding a comma")
    command = [sys.executable, "-m", "bentoml", "serve", "bentoml_service:OnnxModel"]
    command += ["--working-dir", str(Path(__file__).resolve().parent)]
    command += ["--host", "127.0.0.1", "--port", str(args.port)]
    for key, value in arguments.items():
        command += ["--arg", f"{key}={value}"]
    os.execve(sys.executable, command, {**os.environ, "BENTOML_DO_NOT_TRACK": "true"})


if __name__ == "__main__":
    main()
