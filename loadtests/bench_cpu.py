"""CPU per request: each server's own CPU time at fixed open-loop rates and at its maximum.

Throughput maxima on a shared machine move with whatever else runs; the CPU a server spends
on a request does much less. For every server of the MLP scenario, started fresh per repeat
on CPU 0 (as in ``bench_serving``; the generator on CPU 1), requests are offered open loop
at fixed rates (1,000, 2,000 and 4,000 req/s by default) and at the highest rate it sustains
with p99 <= 50 ms (``find_max_rate``); the CPU time of the server's whole process tree
(user + system, from /proc) over each run, divided by the requests it completed, is the
figure. The embedded broker of the logging servers is not counted: it stands for a Kafka
cluster elsewhere. ``gateway-refusing`` answers every request with a refusal (a client-rate
limit of one request per 1,000 s, the caller named by ``x-api-key``): the cost of a refusal.
``raw-per-request`` (opt-in, ``--servers``) does the per-request baseline's work from a bare
asyncio protocol, no framework, no checks: the floor of a per-request server on this stack.

``python -m loadtests.bench_cpu [--repeats 3] [--rates 1000 2000 4000] [--servers ...]``
writes ``loadtests/results/cpu-<time>.json`` (with the machine: CPU model, cores, load
average before and after, versions) and prints a markdown table; ``--append FILE`` adds this
invocation's repeats to an earlier file (keep each exclusive run under 10 minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from loadtests.bench_serving import P99_BOUND_MS, RESULTS, Started, prepare, running
from loadtests.machine import machine_info, process_tree_cpu
from loadtests.openloop import find_max_rate, run
from loadtests.scenarios import Server, request_body

REFUSING = Server(
    "gateway-refusing",
    "gateway",
    gateway={
        "batching": {"enabled": True},
        "admission": {"limits": {"client_rate_per_s": 0.001, "client_burst": 1}},
    },
)
# Not in the defaults: the floor of a per-request server (no framework, no checks, no metrics)
RAW = Server("raw-per-request", "baseline-raw")
REFUSING_HEADERS = {"x-api-key": "bench"}  # the one caller, over its rate at once
_SERVERS = ("starlette-per-request", "gateway-batching-logging", "gateway-batching")


def cpu_run(
    started: Started, url: str, body: bytes, rate: float, seconds: float, headers: dict[str, str]
) -> dict[str, Any]:
    """One open-loop run at ``rate``: its latency summary and the server's CPU a request."""
    user_before, system_before = process_tree_cpu(started.pid)
    result = run(url, body, rate, seconds, headers)
    user_after, system_after = process_tree_cpu(started.pid)
    user, system = user_after - user_before, system_after - system_before
    used = user + system
    summary = result.summary()
    done = result.completed
    return {
        **{k: summary[k] for k in ("offered_rate", "achieved_rate", "completed", "failed")},
        **{k: summary[k] for k in ("p50_ms", "p99_ms", "statuses")},
        "cpu_s": round(used, 3),
        "cpu_us_per_request": round(used / done * 1e6, 1) if done else None,
        # the kernel's part (system time: socket reads, writes, wake-ups) and the process's own
        "system_us_per_request": round(system / done * 1e6, 1) if done else None,
    }


def measure(
    server: Server,
    started: Started,
    body: bytes,
    rates: list[float],
    seconds: float,
    with_max: bool = True,
) -> dict[str, Any]:
    url = f"{started.base}/v2/models/mlp/infer"
    headers = REFUSING_HEADERS if server.name == REFUSING.name else {}
    run(url, body, 200, 1.5, headers)  # warm up
    out: dict[str, Any] = {"fixed": {}}
    for rate in rates:
        out["fixed"][str(int(rate))] = cpu_run(started, url, body, rate, seconds, headers)
        time.sleep(0.5)
    if with_max and server.name != REFUSING.name:
        max_rate, steps = find_max_rate(url, body, P99_BOUND_MS, start_rate=1000, step_s=2.0,
                                        precision=0.08)  # fmt: skip
        out["max_rate"] = max_rate
        out["max_steps"] = steps  # what failed the steps above it: latency, or refusals
        if max_rate:
            out["at_max"] = cpu_run(started, url, body, max_rate, seconds, headers)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rates", type=float, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per fixed-rate run")
    parser.add_argument("--servers", nargs="+", default=[*_SERVERS, "gateway-refusing"])
    parser.add_argument("--no-max", dest="max", action="store_false", help="fixed rates only")
    parser.add_argument("--append", type=Path, help="add this invocation's repeats to a file")
    args = parser.parse_args()
    bench = prepare("cpu-", "mlp")
    work, registry, files, scenario = bench.work, bench.registry, bench.files, bench.scenario
    known = {s.name: s for s in [*scenario.servers, REFUSING, RAW]}
    servers = [known[name] for name in args.servers]
    body, _ = request_body(32, 1, False)
    saved: dict[str, Any] = (
        json.loads(args.append.read_text()) if args.append else {"invocations": [], "runs": {}}
    )
    invocation: dict[str, Any] = {"before": machine_info(), "rates": args.rates,
                                  "seconds": args.seconds, "servers": args.servers}  # fmt: skip
    done_before = len(next(iter(saved["runs"].values()), []))
    for repeat in range(args.repeats):
        order = servers if (done_before + repeat) % 2 == 0 else list(reversed(servers))
        for server in order:
            with running(scenario, server, files, registry, work) as started:
                result = measure(server, started, body, args.rates, args.seconds, args.max)
            saved["runs"].setdefault(server.name, []).append(result)
            print(f"[{repeat + 1}/{args.repeats}] {server.name}: {_brief(result)}", flush=True)
    invocation["after"] = machine_info()
    saved["invocations"].append(invocation)
    saved["summary"] = summarize(saved["runs"])
    out = args.append or RESULTS / f"cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(saved, indent=1))
    print(markdown(saved["summary"]))
    print(f"written {out}")


def _brief(result: dict[str, Any]) -> str:
    fixed = ", ".join(
        f"{rate}/s {r['cpu_us_per_request']} us p99 {r['p99_ms']}"
        for rate, r in result["fixed"].items()
    )
    at_max = result.get("at_max")
    if at_max:
        fixed += f"; max {result['max_rate']:.0f}/s {at_max['cpu_us_per_request']} us"
    return fixed


def spread(values: list[float], digits: int | None = None) -> dict[str, Any]:
    """Repeats' median, range and every run (rounded to ``digits`` when given)."""
    if not values:  # e.g. the kernel's part, in a file from before it was recorded
        return {"median": None, "min": None, "max": None, "runs": []}
    if digits is not None:
        values = [round(v, digits) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}  # fmt: skip


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per server: CPU us a request at each rate and at the maximum, the maximum itself; each
    as median, range and every run; and the medians' ratio to the per-request baseline."""
    report: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        row: dict[str, Any] = {}
        for rate in results[0]["fixed"]:
            values = [r["fixed"][rate]["cpu_us_per_request"] for r in results]
            row[f"cpu_us@{rate}"] = spread([v for v in values if v is not None])
            row[f"p99_ms@{rate}"] = spread([r["fixed"][rate]["p99_ms"] for r in results])
            kernel = [r["fixed"][rate].get("system_us_per_request") for r in results]
            row[f"system_us@{rate}"] = spread([v for v in kernel if v is not None])
        if "max_rate" in results[0]:
            row["max_rate"] = spread([r["max_rate"] for r in results])
            at_max = [r["at_max"]["cpu_us_per_request"] for r in results if r.get("at_max")]
            row["cpu_us@max"] = spread([v for v in at_max if v is not None])
        report[name] = row
    base = report.get("starlette-per-request")
    if base:
        for row in report.values():
            row["x_per_request"] = {
                key: round(row[key]["median"] / base[key]["median"], 2)
                for key in row
                if key.startswith(("cpu_us", "max_rate")) and key in base and base[key]["runs"]
            }
    return report


def markdown(report: dict[str, dict[str, Any]]) -> str:
    """The table: CPU us a request, median (min-max), x the per-request baseline's median."""
    keys = sorted({k for row in report.values() for k in row if k.startswith("cpu_us@")},
                  key=lambda k: (k == "cpu_us@max", float(k.split("@")[1]) if k[7:].isdigit()
                                 else 0))  # fmt: skip
    head = " | ".join(f"CPU us/req at {k.split('@')[1]}{'' if k.endswith('max') else '/s'}"
                      for k in keys)  # fmt: skip
    lines = [f"| server | {head} | max req/s at p99 <= 50 ms |",
             "| --- |" + " --- |" * (len(keys) + 1)]  # fmt: skip
    for name, row in report.items():
        ratios = row.get("x_per_request", {})
        cells = []
        for key in [*keys, "max_rate"]:
            entry = row.get(key)
            if not entry or not entry["runs"]:
                cells.append("")
                continue
            ratio = f", {ratios[key]}x" if key in ratios else ""
            cells.append(f"{entry['median']:,.0f} ({entry['min']:,.0f}-{entry['max']:,.0f}{ratio})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    fixed = [k for k in keys if k != "cpu_us@max"]
    lines += ["", "Of which system (kernel) time, us a request, median (min-max):", "",
              "| server | " + " | ".join(f"at {k.split('@')[1]}/s" for k in fixed) + " |",
              "| --- |" + " --- |" * len(fixed)]  # fmt: skip
    for name, row in report.items():
        cells = []
        for key in fixed:
            entry = row.get("system_us@" + key.split("@")[1])
            cells.append(
                f"{entry['median']:,.0f} ({entry['min']:,.0f}-{entry['max']:,.0f})"
                if entry and entry["runs"]
                else ""
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
