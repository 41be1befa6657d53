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

``--layouts`` runs the same gateway in two placements, alternating their order by repeat:
``one-core`` (the whole process on CPU 0, as above) and ``two-cores`` (every thread of the
process free to run on CPU 0 or 1, once it is ready: the model thread can take a core of its
own, which it shares with the generator and the broker on CPU 1). The ceiling stays raw
onnxruntime's one thread on CPU 0 in both: ``two-cores`` shows what the requests cost the
model when their HTTP work does not run on the model's core, which is how a server with more
than one core runs it; ``one-core`` what they cost it when it does.

``python -m loadtests.bench_ceiling [--repeats 3] [--rates 1500 2000 2400 2800] [--layouts
one-core two-cores]`` writes ``loadtests/results/ceiling-<time>.json`` (with the machine) and
prints a markdown table per layout.
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
from loadtests.machine import machine_info, pin_process, process_tree_cpu_s, thread_cpu_s
from loadtests.openloop import run
from loadtests.scenarios import HEAVY_BATCH, request_body

LAYOUTS = {"one-core": {0}, "two-cores": {0, 1}}  # the CPUs the server's threads may use


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
        "model_thread_busy": model_s / seconds,  # of one core: 1.0 is a core of its own
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


def add_ceilings(session: ort.InferenceSession, runs: list[dict[str, Any]]) -> None:
    """Each run's ceiling at the batch it ran (on CPU 0, alone), its share of it, and the model
    thread's share of the process's CPU."""
    os.sched_setaffinity(0, {0})
    try:
        for entry in runs:
            batch = entry["mean_batch_rows"]
            ceiling = ceiling_at(session, batch, 0.5, 3) if batch else None
            entry["ceiling_rows_per_s"] = ceiling
            entry["share"] = entry["answered_per_s"] / ceiling if ceiling else None
            busy = entry["model_thread_cpu_s"] + entry["event_loop_cpu_s"]
            entry["model_share_of_cpu"] = entry["model_thread_cpu_s"] / busy if busy else None
    finally:
        os.sched_setaffinity(0, {1})  # back on the generator's CPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rates", type=float, nargs="+", default=[1500, 2000, 2400, 2800])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=["one-core"])
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
                             "seconds": args.seconds, "max_batch": HEAVY_BATCH,
                             "layouts": args.layouts}  # fmt: skip
    for repeat in range(args.repeats):
        runs: list[dict[str, Any]] = []
        order = args.layouts if repeat % 2 == 0 else args.layouts[::-1]
        for layout in order:
            served: list[dict[str, Any]] = []
            with running(scenario, server, files, registry, work) as started:
                pin_process(started.pid, LAYOUTS[layout])
                url = started.base + url_path
                run(url, body, 100, 2.0, {})  # warm up
                for rate in args.rates:
                    entry = served_run(started, url, body, rate, args.seconds)
                    served.append({"layout": layout, **entry})
                    time.sleep(1.0)
            add_ceilings(session, served)  # right after the server stops
            runs.extend(served)
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
    return (f"{entry.get('layout', 'one-core')} {entry['offered_rate']:.0f}/s: "
            f"{entry['answered_per_s']:.0f} answered, "
            f"batch {entry['mean_batch_rows'] or 0:.1f}, share {share or 0:.2f}")  # fmt: skip


_FIELDS = ("answered_per_s", "mean_batch_rows", "ceiling_rows_per_s", "share",
           "model_share_of_cpu", "model_thread_busy", "p99_ms", "refused")  # fmt: skip


def summarize(repeats: list[list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per layout, offered rate and field: the median over the repeats and the range."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for runs in repeats:
        for entry in runs:
            by_rate = grouped.setdefault(entry.get("layout", "one-core"), {})
            by_rate.setdefault(f"{entry['offered_rate']:.0f}", []).append(entry)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for layout, rates in grouped.items():
        summary[layout] = {}
        for rate, entries in rates.items():
            fields: dict[str, Any] = {}
            for field in _FIELDS:
                values = [entry[field] for entry in entries if entry[field] is not None]
                if values:
                    fields[field] = {"median": statistics.median(values),
                                     "min": min(values), "max": max(values)}  # fmt: skip
            summary[layout][rate] = fields
    return summary


def markdown(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A table per layout."""
    return "\n\n".join(f"{layout}:\n\n{_table(rates)}" for layout, rates in summary.items())


def _table(summary: dict[str, dict[str, Any]]) -> str:
    def cell(field: dict[str, Any] | None, fmt: str) -> str:
        if field is None:
            return ""
        return (f"{format(field['median'], fmt)} ({format(field['min'], fmt)}-"
                f"{format(field['max'], fmt)})")  # fmt: skip

    lines = [
        "| offered req/s | answered rows/s | mean batch | raw ceiling at that batch | share of "
        "the ceiling | model thread's share of the process's CPU | model thread busy (of a core) "
        "| p99 answered ms | refused |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rate, fields in summary.items():
        lines.append(
            f"| {int(rate):,} | {cell(fields.get('answered_per_s'), ',.0f')} "
            f"| {cell(fields.get('mean_batch_rows'), '.1f')} "
            f"| {cell(fields.get('ceiling_rows_per_s'), ',.0f')} "
            f"| {cell(fields.get('share'), '.2f')} "
            f"| {cell(fields.get('model_share_of_cpu'), '.2f')} "
            f"| {cell(fields.get('model_thread_busy'), '.2f')} "
            f"| {cell(fields.get('p99_ms'), '.1f')} | {cell(fields.get('refused'), ',.0f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
