"""The heavy model near its ceiling: the gateway's rows per second against raw onnxruntime's.

The compute-heavy MLP (4 x 2048) is served by the gateway with batching and the feature log
(``heavy`` scenario: at most ``HEAVY_BATCH`` rows a batch), pinned to CPU 0 as in every
serving benchmark (its embedded broker and the generator on CPU 1). Single-row OIP v2 JSON
requests are offered open loop at each ``--rates`` for ``--seconds``. For each run:

- rows per second answered (200), refusals, p99 of the answered;
- the mean batch the gateway actually ran (its ``gateway_batch_rows`` metric over the run);
- the CPU of the model's thread (the executor thread that ran the batches: the busiest thread
  other than the event loop's) and of the rest of the process (the event loop: HTTP, JSON,
  validation, the feature log, the answers);
- the ceiling: raw onnxruntime's rows per second, same file and session options, one thread,
  on CPU 0, at the same batch size (interpolated between the measured sizes around it),
  measured in this run after the server stops; and the share: answered rows per second over
  that ceiling.

On one core the model thread and the event loop share the CPU, so the share can be no more
than the model thread's share of the core; the rest is what the requests cost around the
model. Both are reported, so the bound is visible beside the figure.

``python -m loadtests.bench_ceiling [--repeats 3] [--rates 1500 2000 2400 2800]`` writes
``loadtests/results/ceiling-<time>.json`` (with the machine) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np
import onnxruntime as ort

from loadtests.bench_onnxruntime import rows_per_second
from loadtests.bench_serving import RESULTS, Started, gateway_stats, prepare, running
from loadtests.machine import machine_info, process_tree_cpu_s, thread_cpu_s
from loadtests.openloop import run
from loadtests.scenarios import HEAVY_BATCH, request_body


def served_run(
    started: Started, url: str, body: bytes, rate: float, seconds: float
) -> dict[str, Any]:
    """One open-loop run: what was answered, the batches, and the CPU by thread."""
    stats_before = gateway_stats(started.base)
    threads_before = thread_cpu_s(started.pid)
    tree_before = process_tree_cpu_s(started.pid)
    result = run(url, body, rate, seconds, {})
    tree_used = process_tree_cpu_s(started.pid) - tree_before
    threads_after = thread_cpu_s(started.pid)
    stats_after = gateway_stats(started.base)
    used = {tid: threads_after[tid] - threads_before.get(tid, 0.0) for tid in threads_after}
    loop_s = used.pop(started.pid, 0.0)  # the main thread runs the event loop
    model_s = max(used.values(), default=0.0)
    rows = stats_after["rows"] - stats_before["rows"]
    batches = stats_after["batches"] - stats_before["batches"]
    summary = result.summary()
    answered = int(summary["statuses"].get("200", 0))  # type: ignore[attr-defined]
    return {
        "offered_rate": rate,
        "answered_per_s": answered / seconds,
        "refused": sum(n for s, n in summary["statuses"].items() if s in ("429", "503")),  # type: ignore[attr-defined]
        "failed": summary["failed"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "mean_batch_rows": rows / batches if batches else None,
        "model_thread_cpu_s": round(model_s, 3),
        "event_loop_cpu_s": round(loop_s, 3),
        "other_threads_cpu_s": round(sum(used.values()) - model_s, 3),
        "process_cpu_s": round(tree_used, 3),
        "model_rows_per_cpu_s": rows / model_s if model_s else None,
        "seconds": seconds,
    }


def ceiling_at(session: ort.InferenceSession, batch: float, seconds: float, repeats: int) -> float:
    """Raw onnxruntime rows/s at ``batch`` rows: measured at the whole sizes either side,
    linearly interpolated."""
    low, high = int(np.floor(batch)), int(np.ceil(batch))
    low = max(low, 1)

    def measured(size: int) -> float:
        return statistics.median(rows_per_second(session, size, seconds) for _ in range(repeats))

    at_low = measured(low)
    if high == low:
        return at_low
    return at_low + (measured(high) - at_low) * (batch - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rates", type=float, nargs="+", default=[1500, 2000, 2400, 2800])
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    bench = prepare("ceiling-", "heavy")
    work, registry, files, scenario = bench.work, bench.registry, bench.files, bench.scenario
    server = next(s for s in scenario.servers if s.name == "gateway-batching-logging")
    body, _ = request_body(32, 1, False)
    url_path = f"/v2/models/{scenario.model}/infer"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(files[scenario.model]), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    saved: dict[str, Any] = {"before": machine_info(), "rates": args.rates, "runs": [],
                             "seconds": args.seconds, "max_batch": HEAVY_BATCH}  # fmt: skip
    for repeat in range(args.repeats):
        runs: list[dict[str, Any]] = []
        with running(scenario, server, files, registry, work) as started:
            url = started.base + url_path
            run(url, body, 100, 2.0, {})  # warm up
            for rate in args.rates:
                runs.append(served_run(started, url, body, rate, args.seconds))
                time.sleep(1.0)
        os.sched_setaffinity(0, {0})  # the ceiling on the core the server had
        try:
            for entry in runs:
                batch = entry["mean_batch_rows"]
                ceiling = ceiling_at(session, batch, 0.5, 3) if batch else None
                entry["ceiling_rows_per_s"] = ceiling
                entry["share"] = entry["answered_per_s"] / ceiling if ceiling else None
                busy = entry["model_thread_cpu_s"] + entry["event_loop_cpu_s"]
                entry["model_share_of_cpu"] = entry["model_thread_cpu_s"] / busy if busy else None
        finally:
            os.sched_setaffinity(0, {1})
        saved["runs"].append(runs)
        print(f"[{repeat + 1}/{args.repeats}] " + "; ".join(_brief(r) for r in runs), flush=True)
    saved["after"] = machine_info()
    saved["summary"] = summarize(saved["runs"])
    out = RESULTS / f"ceiling-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(saved, indent=1))
    print(markdown(saved["summary"]))
    print(f"written {out}")


def _brief(entry: dict[str, Any]) -> str:
    share = entry["share"]
    return (f"{entry['offered_rate']:.0f}/s: {entry['answered_per_s']:.0f} answered, "
            f"batch {entry['mean_batch_rows'] or 0:.1f}, share {share or 0:.2f}")  # fmt: skip


_FIELDS = ("answered_per_s", "mean_batch_rows", "ceiling_rows_per_s", "share",
           "model_share_of_cpu", "p99_ms", "refused")  # fmt: skip


def summarize(repeats: list[list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per offered rate and field: the median over the repeats and the range."""
    summary: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(repeats[0]):
        rate = f"{entry['offered_rate']:.0f}"
        summary[rate] = {}
        for field in _FIELDS:
            values = [runs[index][field] for runs in repeats if runs[index][field] is not None]
            if values:
                summary[rate][field] = {"median": statistics.median(values),
                                        "min": min(values), "max": max(values)}  # fmt: skip
    return summary


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    def cell(field: dict[str, Any] | None, fmt: str) -> str:
        if field is None:
            return ""
        return (f"{format(field['median'], fmt)} ({format(field['min'], fmt)}-"
                f"{format(field['max'], fmt)})")  # fmt: skip

    lines = [
        "| offered req/s | answered rows/s | mean batch | raw ceiling at that batch | share of "
        "the ceiling | model thread's share of the CPU | p99 answered ms | refused |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rate, fields in summary.items():
        lines.append(
            f"| {int(rate):,} | {cell(fields.get('answered_per_s'), ',.0f')} "
            f"| {cell(fields.get('mean_batch_rows'), '.1f')} "
            f"| {cell(fields.get('ceiling_rows_per_s'), ',.0f')} "
            f"| {cell(fields.get('share'), '.2f')} "
            f"| {cell(fields.get('model_share_of_cpu'), '.2f')} "
            f"| {cell(fields.get('p99_ms'), '.1f')} | {cell(fields.get('refused'), ',.0f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
