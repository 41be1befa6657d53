"""What an idle spell costs the next request: the same work, timed warm and after the core idled.

At moderate rates a server's core sleeps between requests, and every server here spends more
CPU a request at 2,000 req/s than near its maximum. This measures the cause apart from any
server: each step of a single-row inference as the per-request baseline does it (parse the OIP
v2 JSON body into an array, run the benchmark MLP's onnxruntime session on it, encode the
outputs), alone on CPU 0, timed with ``time.perf_counter`` around the step only, back to back
(gap 0) and after the thread slept for each ``--gaps`` (0.5 ms is the spacing of 2,000 req/s).
The sleep is outside the timed span, so a figure that grows with the gap is the step's own
code and data coming back into a cold core (caches, branch predictors, a vCPU that the host
descheduled), not the cost of waking up.

``python -m loadtests.bench_idle [--calls 2000] [--repeats 5] [--gaps 0 0.0005 0.002]``
writes ``loadtests/results/idle-<time>.json`` (with the machine) and prints, per step and gap,
the median over repeats (with the range) of each repeat's mean microseconds a call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from loadtests.machine import machine_info
from loadtests.models import build_mlp

RESULTS = Path(__file__).parent / "results"


def steps() -> dict[str, Callable[[], object]]:
    """The per-request baseline's three steps on one row of the benchmark MLP."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        build_mlp().SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    spec = session.get_inputs()[0]
    row = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32).round(4)
    tensor = {"name": spec.name, "shape": [1, 32], "datatype": "FP32", "data": row.ravel().tolist()}
    body = orjson.dumps({"inputs": [tensor]})
    outputs = session.run(names, {spec.name: row})

    def parse() -> object:
        doc = orjson.loads(body)
        t = doc["inputs"][0]
        return np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])

    def run() -> object:
        return session.run(names, {spec.name: row})

    def encode() -> object:
        tensors = [{"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.reshape(-1)}
                   for n, r in zip(names, outputs, strict=True)]  # fmt: skip
        return orjson.dumps({"outputs": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)

    return {"parse": parse, "run": run, "encode": encode}


def timed(step: Callable[[], object], calls: int, gap_s: float) -> float:
    """Mean microseconds of ``step`` over ``calls`` calls, each after ``gap_s`` of sleep."""
    for _ in range(50):
        step()
    total = 0.0
    for _ in range(calls):
        if gap_s:
            time.sleep(gap_s)
        started = time.perf_counter()
        step()
        total += time.perf_counter() - started
    return total / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gaps", type=float, nargs="+", default=[0.0, 0.0005, 0.002])
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # this thread (and onnxruntime's, started after) on CPU 0
    report: dict[str, Any] = {"before": machine_info(), "calls": args.calls, "gaps": args.gaps}
    work = steps()
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in work}
    for repeat in range(args.repeats):
        gaps = args.gaps if repeat % 2 == 0 else list(reversed(args.gaps))  # alternate the order
        for gap in gaps:
            for name, step in work.items():
                runs[name].setdefault(str(gap), []).append(round(timed(step, args.calls, gap), 2))
    report["after"] = machine_info()
    report["runs"] = runs
    lines = ["| step | " + " | ".join(f"gap {g * 1000:g} ms" for g in args.gaps) + " |",
             "| --- |" + " --- |" * len(args.gaps)]  # fmt: skip
    for name, by_gap in runs.items():
        warm = statistics.median(by_gap[str(args.gaps[0])])
        cells = []
        for gap in args.gaps:
            values = by_gap[str(gap)]
            median = statistics.median(values)
            spread = f"{min(values):.1f}-{max(values):.1f}"
            cells.append(f"{median:.1f} ({spread}, {median / warm:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    report["table"] = table
    out = RESULTS / f"idle-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1))
    print(table)
    print(f"written {out}")


if __name__ == "__main__":
    main()
