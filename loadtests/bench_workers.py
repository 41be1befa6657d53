"""How ``gateway serve --workers N`` scales: the highest rate at p99 <= 50 ms and the CPU a
request costs, for each N, with the load generator on cores of its own.

The server's whole process tree (supervisor and workers) is pinned to the first N of
``--server-cores`` (all of them when there are fewer); the generator runs one open-loop process
per core of ``--generator-cores``, pinned there, and so does the embedded broker that takes the
feature log (``--no-log`` turns the log off). The model, request and batching settings are the
serving benchmark's ``mlp`` scenario (one row of 32 FP32 features, OIP v2 JSON, batches of at
most 64 rows and 2 ms). Each N is measured ``--repeats`` times in alternating order.

For each N: the maximum rate (``openloop.find_max_rate``); then one run at that rate, over
which the server tree's CPU time (from /proc) divided by the requests answered gives the CPU
per request, and the summed ``/metrics`` gives the mean batch; then the same at a fixed rate
that every N sustains (``--fixed-rate``), where CPU per request compares like with like.

On a machine with 24 cores, say: ``python -m loadtests.bench_workers --workers 1 2 4 8 16
--server-cores 0-15 --generator-cores 16-23`` writes ``loadtests/results/workers-<time>.json``
and prints the table for loadtests/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtests.bench_serving import P99_BOUND_MS, free_port, gateway_stats, mean_batch, stop_group
from loadtests.machine import pin_process, process_tree_cpu_s
from loadtests.models import register_benchmark_models
from loadtests.openloop import find_max_rate, run
from loadtests.scenarios import MAX_DELAY_MS, request_body
from monitors.broker import EmbeddedBroker, create_topics

RESULTS = Path(__file__).parent / "results"


def cores(text: str) -> list[int]:
    """``0-3,8`` as [0, 1, 2, 3, 8]."""
    found: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        found.extend(range(int(first), int(last or first) + 1))
    return found


@contextlib.contextmanager
def gateway(
    workers: int, server_cores: list[int], generator_cores: list[int], log: bool, work: Path
) -> Iterator[tuple[str, int]]:
    """A gateway with ``workers`` workers, pinned; yields its URL and its PID."""
    port = free_port()
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "workers": workers},
        "registry": {"root": str(work / "registry"), "poll_interval_s": 60},
        "runtime": {"intra_op_threads": 1, "worker_threads": 1},
        "models": [{"name": "mlp", "ref": "mlp@champion"}],
        "batching": {"max_batch_delay_s": MAX_DELAY_MS / 1000},
    }
    broker: EmbeddedBroker | None = None
    if log:
        broker = EmbeddedBroker()
        broker.start()
        pin_process(broker.pid, set(generator_cores))
        asyncio.run(create_topics(broker.bootstrap_servers, ["inference-log"], 3))
        config["feature_log"] = {"enabled": True, "bootstrap_servers": broker.bootstrap_servers,
                                 "spool_dir": str(work / f"spool-{port}")}  # fmt: skip
    path = work / f"workers-{workers}-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    pinned = ",".join(map(str, server_cores[:workers]))
    command = ["taskset", "-c", pinned, sys.executable, "-m", "gateway", "serve",
               "--config", str(path), "--log-level", "warning"]  # fmt: skip
    out = (work / f"workers-{workers}-{port}.log").open("wb")
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not _serving(base, workers):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway with {workers} workers did not start: {out.name}")
            time.sleep(0.5)
        yield base, proc.pid
    finally:
        stop_group(proc)
        out.close()
        if broker is not None:
            broker.stop()


def _serving(base: str, workers: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        if httpx.get(base + "/v2/health/ready", timeout=2).status_code != 200:
            return False
        if workers == 1:
            return True
        metrics = httpx.get(base + "/metrics", timeout=10).text
        return f"gateway_workers {float(workers)}" in metrics
    return False


def measure(
    base: str, pid: int, processes: int, step_s: float, fixed_rate: float
) -> dict[str, Any]:
    body, headers = request_body(32, 1, False)
    url = f"{base}/v2/models/mlp/infer"
    warm = run(url, body, 200, 2.0, headers, processes)
    if warm.failed:
        raise RuntimeError(f"warm-up failed: {warm.summary()}")
    max_rate, steps = find_max_rate(
        url, body, P99_BOUND_MS, 1000, step_s, processes, precision=0.08, headers=headers
    )
    result: dict[str, Any] = {"max_rate": max_rate, "steps": steps}
    for name, rate in (("at_max", max_rate), ("at_fixed", fixed_rate)):
        if not rate:
            continue
        stats, cpu = gateway_stats(base), process_tree_cpu_s(pid)
        done = run(url, body, rate, step_s * 2, headers, processes)
        used = process_tree_cpu_s(pid) - cpu
        result[name] = {
            **done.summary(),
            "cpu_s": round(used, 3),
            "cpu_us_per_request": round(used / max(done.completed, 1) * 1e6, 1),
            "mean_batch_rows": mean_batch(stats, gateway_stats(base)),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--server-cores", type=cores, default=cores("0"))
    parser.add_argument("--generator-cores", type=cores, default=cores("1"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-s", type=float, default=2.5, help="seconds per rate step")
    parser.add_argument("--fixed-rate", type=float, default=2000.0)
    parser.add_argument("--no-log", action="store_true", help="feature log off")
    args = parser.parse_args()
    overlap = set(args.server_cores) & set(args.generator_cores)
    if overlap:
        print(f"note: server and generator share cores {sorted(overlap)}", file=sys.stderr)
    os.sched_setaffinity(0, set(args.generator_cores))  # the generator processes inherit it
    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    register_benchmark_models(work / "registry")
    runs: dict[int, list[dict[str, Any]]] = {}
    started = time.time()
    for repeat in range(args.repeats):
        order = args.workers if repeat % 2 == 0 else list(reversed(args.workers))
        for workers in order:
            with gateway(workers, args.server_cores, args.generator_cores,
                         not args.no_log, work) as (base, pid):  # fmt: skip
                result = measure(base, pid, len(args.generator_cores), args.step_s,
                                 args.fixed_rate)  # fmt: skip
            runs.setdefault(workers, []).append(result)
            at_max = result.get("at_max", {})
            print(f"[{repeat + 1}/{args.repeats} {time.time() - started:.0f}s] {workers} workers: "
                  f"max {result['max_rate']:.0f} req/s, CPU {at_max.get('cpu_us_per_request')} "
                  f"us/request, batch {at_max.get('mean_batch_rows')}", flush=True)  # fmt: skip
    table = markdown(runs, args)
    meta = {"cpu_count": os.cpu_count(), "server_cores": args.server_cores,
            "generator_cores": args.generator_cores, "log": not args.no_log,
            "repeats": args.repeats, "step_s": args.step_s, "loadavg": os.getloadavg(),
            "seconds": round(time.time() - started)}  # fmt: skip
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"workers-{stamp}.json").write_text(
        json.dumps({"meta": meta, "runs": runs, "table": table}, indent=1, default=str)
    )
    print(table)


def markdown(runs: dict[int, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    one = median([r["max_rate"] for r in runs.get(1, [])])
    lines = [
        "| workers | server cores | max req/s at p99 <= 50 ms: median (runs) | x 1 worker "
        f"(per worker) | CPU us/request at max | at {args.fixed_rate:.0f} req/s "
        "| mean batch rows at max |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workers, results in sorted(runs.items()):
        rates = [r["max_rate"] for r in results]
        at_max = [r["at_max"]["cpu_us_per_request"] for r in results if "at_max" in r]
        fixed = [r["at_fixed"]["cpu_us_per_request"] for r in results if "at_fixed" in r]
        batch = [r["at_max"]["mean_batch_rows"] or 0 for r in results if "at_max" in r]
        ratio = median(rates) / one if one else float("nan")
        lines.append(
            f"| {workers} | {len(args.server_cores[:workers])} | {median(rates):,.0f} "
            f"({', '.join(f'{r:,.0f}' for r in rates)}) | {ratio:.2f} ({ratio / workers:.2f}) | "
            f"{median(at_max):.0f} | {median(fixed):.0f} | {median(batch):.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
