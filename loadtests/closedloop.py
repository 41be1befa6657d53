"""Closed-loop tails: wrk at 16, 64 and 256 connections against each server, side by side.

A closed-loop generator keeps every connection busy: each sends its next request when the last
is answered, so at 256 connections 256 requests are in flight all the time and the server's
fairness between connections shows in the tail. Debian's ``wrk`` (one thread, a Lua script
for the POST body) is the generator, on CPU 1; each server runs alone on CPU 0, started
fresh per repeat as in ``bench_serving`` (same configs). Servers alternate order between
repeats; the table gives the median of the repeats and their range.

``python -m loadtests.closedloop [--repeats 3] [--connections 16 64 256] [--seconds 10]``
writes ``loadtests/results/closedloop-<time>.json`` (with the machine) and prints a markdown
table; ``--append FILE`` adds this invocation's repeats to an earlier file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.bench_serving import RESULTS, running
from loadtests.machine import machine_info
from loadtests.models import register_benchmark_models
from loadtests.openloop import run
from loadtests.scenarios import SCENARIOS, request_body

_SERVERS = ("starlette-per-request", "gateway-batching-logging", "gateway-batching")
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, p50/p90/p99 ms, non-2xx answers and socket errors from ``wrk --latency``."""
    result: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    for line in output.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            result["rate"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "90%", "99%"):
            result[f"p{parts[0][:-1]}_ms"] = _ms(parts[1])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            result["non_2xx"] = int(parts[-1])
        elif line.strip().startswith("Socket errors:"):
            result["socket_errors"] = sum(int(n.rstrip(",")) for n in parts[3::2])
        elif "requests in" in line:
            result["requests"] = int(parts[0])
    return result


def wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run from CPU 1 (one thread, ``connections`` keep-alive connections)."""
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
               "--timeout", "5s", "--latency", "-s", str(script), url]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return parse_wrk(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--servers", nargs="+", default=list(_SERVERS))
    parser.add_argument(
        "--admission", type=json.loads, help='gateways\' admission settings: {"enabled": false}'
    )
    parser.add_argument("--append", type=Path, help="add this invocation's repeats to a file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    os.sched_setaffinity(0, {1})
    work = Path(tempfile.mkdtemp(prefix="closedloop-"))
    registry = work / "registry"
    files = register_benchmark_models(registry)
    scenario = next(s for s in SCENARIOS if s.name == "mlp")
    servers = [next(s for s in scenario.servers if s.name == name) for name in args.servers]
    if args.admission is not None:
        servers = [
            dataclasses.replace(s, gateway={**s.gateway, "admission": args.admission})
            if s.kind == "gateway"
            else s
            for s in servers
        ]
    body, _ = request_body(32, 1, False)
    script = work / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
    )
    saved: dict[str, Any] = (
        json.loads(args.append.read_text()) if args.append else {"invocations": [], "runs": {}}
    )
    runs: dict[str, list[dict[str, Any]]] = saved["runs"]
    before = machine_info()
    for repeat in range(args.repeats):
        for server in servers if repeat % 2 == 0 else list(reversed(servers)):
            with running(scenario, server, files, registry, work) as started:
                url = f"{started.base}/v2/models/mlp/infer"
                run(url, body, 200, 1.0)  # warm up
                for connections in args.connections:
                    result = wrk(url, script, connections, args.seconds)
                    runs.setdefault(f"{server.name}@{connections}", []).append(result)
                    print(f"[{repeat + 1}/{args.repeats}] {server.name} c={connections}: "
                          f"{result}", flush=True)  # fmt: skip
    saved["summary"] = report = summarize(runs)
    saved["invocations"].append({"before": before, "after": machine_info(),
                                 "repeats": args.repeats, "seconds": args.seconds,
                                 "admission": args.admission,
                                 "generator": "wrk -t1 on CPU 1; servers on CPU 0"})  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = args.append or RESULTS / f"closedloop-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(saved, indent=1))
    print(markdown(report))
    print(f"written {out}")


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per server and connection count: the median and every run of each figure."""
    report: dict[str, dict[str, Any]] = {}
    for key, results in runs.items():
        row: dict[str, Any] = {}
        for figure in ("rate", "p50_ms", "p99_ms", "non_2xx", "socket_errors"):
            values = [r.get(figure, 0) for r in results]
            row[figure] = {"median": statistics.median(values), "runs": values}
        report[key] = row
    return report


def markdown(report: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| server @ connections | req/s: median (runs) | p50 ms | p99 ms: median (runs) "
        "| non-2xx, socket errors |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, row in report.items():
        rates = ", ".join(f"{v:,.0f}" for v in row["rate"]["runs"])
        p99s = ", ".join(f"{v:.1f}" for v in row["p99_ms"]["runs"])
        lines.append(
            f"| {key} | {row['rate']['median']:,.0f} ({rates}) | {row['p50_ms']['median']:.1f} "
            f"| {row['p99_ms']['median']:.1f} ({p99s}) "
            f"| {sum(row['non_2xx']['runs'])}, {sum(row['socket_errors']['runs'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
