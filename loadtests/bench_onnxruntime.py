"""The ceiling of the models themselves: raw onnxruntime in-process, rows per second by batch size.

The same ONNX files and session options as every server in the serving benchmark (one intra-op
and one inter-op thread, CPU provider), called in a loop from Python on CPU 0 with batches of
1 to 256 rows; no HTTP, no parsing. Each figure is the median of ``--repeats`` timed runs of
about ``--seconds`` each.

``python -m loadtests.bench_onnxruntime [--repeats 5]`` writes
``loadtests/results/onnxruntime.md`` and prints it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtests.models import register_benchmark_models

RESULTS = Path(__file__).parent / "results"
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def rows_per_second(session: ort.InferenceSession, batch: int, seconds: float) -> float:
    """Rows per second of back-to-back ``session.run`` calls on ``batch`` rows."""
    spec = session.get_inputs()[0]
    features = spec.shape[1]
    x = np.random.default_rng(0).normal(size=(batch, features)).astype(np.float32)
    feeds = {spec.name: x}
    session.run(None, feeds)
    calls = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, feeds)
        calls += 1
    return calls * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.4)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    files = register_benchmark_models(Path(tempfile.mkdtemp(prefix="ort-")) / "registry")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    lines = [
        "| model | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
        "| --- |" + " --- |" * len(BATCHES),
    ]
    for name, path in files.items():
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        cells = []
        for batch in BATCHES:
            runs = [rows_per_second(session, batch, args.seconds) for _ in range(args.repeats)]
            cells.append(f"{statistics.median(runs):,.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "Rows per second, raw onnxruntime, one thread (median of "
    table += f"{args.repeats} runs):\n\n" + "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnxruntime.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
