"""The overload benchmark: the gateway offered 1x, 1.5x, 2x and 4x its capacity, open loop.

For each server (admission control on and off, the feature log on and off), its capacity is
measured first, with admission control on: the larger of the highest rate it serves with p99
<= 50 ms and nothing refused (``find_max_rate``) and the rate it answers 200 when offered twice
that (``measure_capacity``); the server without admission control is offered the same rates.
Then, for each multiple, one open-loop schedule: ``--calm-s`` at half the capacity (the normal
latency), ``--phase-s`` at the multiple, ``--recovery-s`` at half again, while a liveness
prober in its own process opens a connection every ``--probe-period-s``. With
``--health-port``, the gateway also serves its health port (``server.health_port``) and a
second prober probes liveness there, so both ports' slowest probe are reported.

Reported per overload phase (requests counted by their scheduled time): goodput (answers 200
within 50 ms, per second, and as a share of the capacity), refusals (503/429) and how fast
they came back, client timeouts (5 s), p50/p99 of the answered, the slowest liveness probe,
and the recovery: how long after the overload ends the latency is normal again (every 100 ms
bin of the recovery phase after it: p99 within twice the calm p99 or 10 ms, whichever is
larger, and nothing refused or lost). The server runs pinned to CPU 0, the generator and the
prober on CPU 1 (``loadtests/README.md``); the machine's own load is measured beside.

``python -m loadtests.bench_overload [--repeats 3] [--multiples 1 1.5 2 4] [--phase-s 10]
[--health-port]``
writes ``loadtests/results/overload-<time>.json`` and ``overload.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtests.bench_serving import P99_BOUND_MS, RESULTS, free_port, running
from loadtests.machine import machine_info
from loadtests.models import register_benchmark_models
from loadtests.openloop import Result, find_max_rate, run, run_phases_async
from loadtests.probe import probe_liveness
from loadtests.scenarios import Scenario, Server, request_body

MULTIPLES = (1.0, 1.5, 2.0, 4.0)
# The targets at twice the capacity.
TARGETS = {
    "goodput_share": 0.9,  # of the capacity, answered 200 within the p99 bound
    "p99_ms": P99_BOUND_MS,  # of the answered
    "refusal_p99_ms": 5.0,
    "timeouts": 0,
    "liveness_ms": 100.0,
    "recovery_s": 1.0,
}
_BIN_S = 0.1


@dataclass(frozen=True)
class Schedule:
    calm_s: float
    phase_s: float
    recovery_s: float


def _server(admission: bool, logging: bool, health_port: int | None = None) -> Server:
    name = f"gateway-{'admission' if admission else 'no-admission'}{'-logging' if logging else ''}"
    config: dict[str, Any] = {"batching": {"enabled": True}, "admission": {"enabled": admission}}
    if health_port is not None:
        config["server"] = {"health_port": health_port}
    return Server(name, "gateway", gateway=config, broker=logging)


def _percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


class _Cpu:
    """Busy time of the machine, of CPU 0 (the server's) and of one process, in seconds."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._start = self._read()
        self._at = time.perf_counter()

    @classmethod
    async def during(cls, pid: int, start_at: float, end_at: float) -> dict[str, float]:
        """Cores used between two ``time.perf_counter`` instants (the overload phase)."""
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        cpu = cls(pid)
        await asyncio.sleep(max(0.0, end_at - time.perf_counter()))
        return cpu.cores()

    def _read(self) -> tuple[float, float, float]:
        machine = cpu0 = 0.0
        with open("/proc/stat") as stat:
            for line in stat:
                name, *fields = line.split()
                busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))
                if name == "cpu":
                    machine = busy / self._ticks
                elif name == "cpu0":
                    cpu0 = busy / self._ticks
        with open(f"/proc/{self._pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        server = (int(fields[11]) + int(fields[12])) / self._ticks
        return machine, cpu0, server

    def cores(self) -> dict[str, float]:
        """Cores used since the start: the machine, CPU 0, the server, and CPU 0 less it
        (others' work on the server's CPU)."""
        elapsed = time.perf_counter() - self._at
        now = self._read()
        machine, cpu0, server = ((b - a) / elapsed for a, b in zip(self._start, now, strict=True))
        return {"machine": round(machine, 2), "cpu0": round(cpu0, 2), "server": round(server, 2),
                "others_on_cpu0": round(max(0.0, cpu0 - server), 2)}  # fmt: skip


def overload_run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    capacity: float,
    multiple: float,
    schedule: Schedule,
    probe_period_s: float,
    server_pid: int,
    health_port: int | None = None,
) -> dict[str, Any]:
    """One schedule (calm, overload, recovery) with the prober beside (and a second on the
    health port, when there is one); its analysis."""
    phases = [(capacity / 2, schedule.calm_s), (capacity * multiple, schedule.phase_s),
              (capacity / 2, schedule.recovery_s)]  # fmt: skip
    total_s = sum(seconds for _, seconds in phases)
    host_port = url.split("/")[2]
    host, port = host_port.split(":")
    context = multiprocessing.get_context("spawn")
    start_at = time.perf_counter() + 2.0  # the probers' processes start meanwhile
    probers = []
    for probed in [int(port)] if health_port is None else [int(port), health_port]:
        receive, send = context.Pipe(duplex=False)
        prober = context.Process(
            target=probe_liveness,
            args=(host, probed, start_at, total_s + 1.0, probe_period_s, 10.0, send),
        )
        prober.start()
        probers.append((prober, receive))
    load_before = os.getloadavg()[0]
    base = url.split("/v2/")[0]
    before = admission_stats(base)

    async def measure() -> tuple[Result, dict[str, float]]:
        overload = start_at + schedule.calm_s
        return await asyncio.gather(
            run_phases_async(url, body, phases, headers, start_at=start_at, keep_samples=True),
            _Cpu.during(server_pid, overload, overload + schedule.phase_s),
        )

    result, cores = asyncio.run(measure())
    after = admission_stats(base)
    server = {key: round(after[key] - before.get(key, 0.0), 3) for key in after if key != "limit"}
    server["limit_after"] = after.get("limit", 0.0)
    probes: list[list[tuple[float, float | None, str]]] = []
    for prober, receive in probers:
        probes.append(receive.recv())
        prober.join()
    assert result.samples is not None
    analysis = analyze(result.samples, probes[0], capacity, schedule)
    if health_port is not None:
        slowest, failed = _liveness(probes[1], schedule.calm_s)
        analysis.update(health_liveness_max_ms=slowest, health_liveness_failed=failed)
    return {"multiple": multiple, "offered_rate": round(capacity * multiple), **analysis,
            "loadavg_1m_before": round(load_before, 2), "cores": cores,
            "server_stats": server}  # fmt: skip


def measure_capacity(
    url: str, body: bytes, headers: dict[str, str], step_s: float
) -> tuple[float, dict[str, float]]:
    """What the server answers per second when saturated: first the highest rate with p99 <=
    50 ms and nothing refused, then 5 s offered at twice that; the capacity is the larger of
    the first and the rate answered 200 in the second. One search alone is too fragile on a
    shared machine: a stray pause of the server fails a step and halves the figure."""
    searched, _ = find_max_rate(url, body, P99_BOUND_MS, start_rate=1000, step_s=step_s,
                                precision=0.08, headers=headers)  # fmt: skip
    saturated = run(url, body, 2 * searched, 5.0, headers)
    answered = saturated.statuses.get("200", 0) / saturated.duration_s
    time.sleep(1.0)
    found = {"p99_bound_rate": searched, "saturated_answered_rate": round(answered)}
    return max(searched, round(answered, -1)), found


def admission_stats(base: str) -> dict[str, float]:
    """The server's own counts: refusals by reason, batches and rows, the limit now."""
    text = httpx.get(base + "/metrics", timeout=10).text
    stats: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("gateway_admission_refusals_total{"):
            key = "refused_" + name.split('reason="', 1)[1].split('"', 1)[0]
        elif name.startswith("gateway_admission_limit{"):
            key = "limit"
        elif name.startswith(("gateway_batch_rows_sum", "gateway_batch_rows_count")):
            key = name.split("{", 1)[0].removeprefix("gateway_")
        elif name.startswith("gateway_requests_total{"):
            key = "requests_" + name.split('outcome="', 1)[1].split('"', 1)[0]
        else:
            continue
        stats[key] = stats.get(key, 0.0) + float(value)
    return stats


def analyze(
    samples: list[tuple[float, float | None, str]],
    probes: list[tuple[float, float | None, str]],
    capacity: float,
    schedule: Schedule,
) -> dict[str, Any]:
    """The figures of one schedule's overload phase, and its recovery."""
    start, end = schedule.calm_s, schedule.calm_s + schedule.phase_s
    calm = [lat for t, lat, status in samples if t < start and status == "200" and lat is not None]
    phase = [(lat, status) for t, lat, status in samples if start <= t < end]
    answered = [lat for lat, status in phase if status == "200" and lat is not None]
    refused = [lat for lat, status in phase if status in ("503", "429") and lat is not None]
    good = sum(1 for lat in answered if lat <= P99_BOUND_MS / 1000)
    outcomes: dict[str, int] = {}
    for _, status in phase:
        outcomes[status] = outcomes.get(status, 0) + 1
    liveness_max_ms, liveness_failed = _liveness(probes, start)
    calm_p99 = float(np.percentile(calm, 99)) if calm else 0.0
    goodput = good / schedule.phase_s
    return {
        "sent": len(phase),
        "outcomes": outcomes,
        "goodput_rate": round(goodput),
        "goodput_share": round(goodput / capacity, 3),
        "answered_p50_ms": _percentile_ms(answered, 50),
        "answered_p99_ms": _percentile_ms(answered, 99),
        "refused": len(refused),
        "refusal_p50_ms": _percentile_ms(refused, 50),
        "refusal_p99_ms": _percentile_ms(refused, 99),
        "refusal_max_ms": round(max(refused) * 1000, 2) if refused else None,
        "timeouts": outcomes.get("TimeoutError", 0),
        "calm_p99_ms": round(calm_p99 * 1000, 2),
        "liveness_max_ms": liveness_max_ms,
        "liveness_failed": liveness_failed,
        "recovery_s": recovery_s(samples, end, schedule.recovery_s, calm_p99),
    }


def _liveness(
    probes: list[tuple[float, float | None, str]], start: float
) -> tuple[float | None, int]:
    """The slowest answered probe from ``start`` on (ms), and how many got no 200."""
    after = [p for p in probes if p[0] >= start]
    liveness = [lat for _, lat, status in after if lat is not None and status == "200"]
    return (round(max(liveness) * 1000, 1) if liveness else None), len(after) - len(liveness)


def recovery_s(
    samples: list[tuple[float, float | None, str]],
    overload_end: float,
    recovery_phase_s: float,
    calm_p99_s: float,
) -> float:
    """Seconds from the overload's end to the end of the last abnormal 100 ms bin after it
    (p99 of the answered above max(2 x calm p99, 10 ms), or anything refused or lost); the
    whole recovery phase when its last bin is still abnormal."""
    normal_s = max(2 * calm_p99_s, 0.010)
    bins: dict[int, list[tuple[float | None, str]]] = {}
    for t, lat, status in samples:
        if overload_end <= t < overload_end + recovery_phase_s:
            bins.setdefault(int((t - overload_end) / _BIN_S), []).append((lat, status))
    last_abnormal = -1
    for index, items in bins.items():
        answered = [lat for lat, status in items if status == "200" and lat is not None]
        bad = len(answered) < len(items)
        if bad or (answered and float(np.percentile(answered, 99)) > normal_s):
            last_abnormal = max(last_abnormal, index)
    return round(min((last_abnormal + 1) * _BIN_S, recovery_phase_s), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--multiples", type=float, nargs="+", default=list(MULTIPLES))
    parser.add_argument("--phase-s", type=float, default=10.0, help="seconds of each overload")
    parser.add_argument("--calm-s", type=float, default=2.0)
    parser.add_argument("--recovery-s", type=float, default=5.0)
    parser.add_argument("--probe-period-s", type=float, default=0.05)
    parser.add_argument("--step-s", type=float, default=2.5, help="capacity search step")
    parser.add_argument("--logging", choices=["both", "on", "off"], default="both")
    parser.add_argument("--no-baseline", action="store_true", help="skip admission off")
    parser.add_argument(
        "--health-port", action="store_true", help="serve and probe the health port too"
    )
    parser.add_argument(
        "--registry", type=Path, help="the benchmark models' registry (made there if missing)"
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    registry = args.registry or work / "registry"
    files = register_benchmark_models(registry)
    os.sched_setaffinity(0, {1})  # the generator's CPU; servers get CPU 0
    scenario = Scenario("mlp", "mlp", 1, [])
    body, headers = request_body(32, 1, False)
    schedule = Schedule(args.calm_s, args.phase_s, args.recovery_s)
    logging = {"both": [False, True], "on": [True], "off": [False]}[args.logging]
    runs: list[dict[str, Any]] = []
    machine_before = machine_info()
    started = time.time()
    for repeat in range(args.repeats):
        for log_on in logging:
            capacity, found = 0.0, dict[str, float]()
            for admission in [True] if args.no_baseline else [True, False]:
                health_port = free_port() if args.health_port else None
                server = _server(admission, log_on, health_port)
                with running(scenario, server, files, registry, work) as under_test:
                    url = f"{under_test.base}/v2/models/mlp/infer"
                    warm = run(url, body, 50, 2.0, headers)
                    if warm.failed or not warm.completed:
                        raise RuntimeError(f"{server.name}: warm-up failed: {warm.summary()}")
                    if not capacity:  # measured with admission on; the other gets the same
                        capacity, found = measure_capacity(url, body, headers, args.step_s)
                        print(f"capacity {capacity:.0f} req/s ({found})", flush=True)
                    for multiple in args.multiples:
                        row = overload_run(url, body, headers, capacity, multiple, schedule,
                                           args.probe_period_s, under_test.pid,
                                           health_port)  # fmt: skip
                        row.update(server=server.name, repeat=repeat, capacity=capacity,
                                   capacity_found=found)  # fmt: skip
                        runs.append(row)
                        print(f"[{repeat + 1}/{args.repeats} {time.time() - started:.0f}s] "
                              f"{server.name} {multiple}x of {capacity:.0f}: {_line(row)}",
                              flush=True)  # fmt: skip
                        time.sleep(1.0)
    report = summarize(runs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "repeats": args.repeats, "schedule": schedule.__dict__, "targets": TARGETS,
            "probe_period_s": args.probe_period_s, "health_port": args.health_port,
            "seconds": round(time.time() - started),
            "machine_before": machine_before, "machine_after": machine_info()}  # fmt: skip
    (RESULTS / f"overload-{stamp}.json").write_text(
        json.dumps({"meta": meta, "summary": report, "runs": runs}, indent=1)
    )
    table = markdown(report)
    (RESULTS / "overload.md").write_text(table)
    print(table)


def _line(row: dict[str, Any]) -> str:
    return (f"goodput {row['goodput_rate']}/s ({row['goodput_share']:.0%}), p50/p99 "
            f"{row['answered_p50_ms']}/{row['answered_p99_ms']} ms, refused {row['refused']} "
            f"(p99 {row['refusal_p99_ms']} ms), timeouts {row['timeouts']}, liveness max "
            f"{row['liveness_max_ms']} ms (health port "
            f"{row.get('health_liveness_max_ms', '-')} ms), recovery {row['recovery_s']} s, "
            f"load {row['loadavg_1m_before']}, cores {row['cores']}, "
            f"server {row['server_stats']}")  # fmt: skip


_FIGURES = ("capacity", "goodput_rate", "goodput_share", "answered_p50_ms", "answered_p99_ms",
            "refused", "refusal_p50_ms", "refusal_p99_ms", "timeouts", "liveness_max_ms",
            "health_liveness_max_ms", "recovery_s", "loadavg_1m_before")  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per server and multiple: each figure's median and its runs; whether the targets hold."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in runs:
        groups.setdefault(f"{row['server']}@{row['multiple']}x", []).append(row)
    report: dict[str, dict[str, Any]] = {}
    for key, rows in groups.items():
        entry: dict[str, Any] = {}
        for figure in _FIGURES:
            values = [row.get(figure) for row in rows]
            known = [v for v in values if v is not None]
            entry[figure] = {"median": statistics.median(known) if known else None,
                             "runs": values}  # fmt: skip
        entry["others_on_cpu0"] = [row["cores"]["others_on_cpu0"] for row in rows]
        if rows[0]["multiple"] == 2.0:
            entry["targets_held"] = [_targets_held(row) for row in rows]
        report[key] = entry
    return report


def _targets_held(row: dict[str, Any]) -> dict[str, bool]:
    def within(value: float | None, bound: float) -> bool:
        return value is not None and value <= bound

    # what the kubelet probes: the health port when it is on
    on_health = "health_liveness_max_ms" in row
    prefix = "health_" if on_health else ""

    return {
        "goodput": row["goodput_share"] >= TARGETS["goodput_share"],
        "p99": within(row["answered_p99_ms"], TARGETS["p99_ms"]),
        "refusals_fast": row["refused"] == 0 or within(row["refusal_p99_ms"], 5.0),
        "no_timeouts": row["timeouts"] == 0,
        "liveness": within(row[f"{prefix}liveness_max_ms"], TARGETS["liveness_ms"])
        and row[f"{prefix}liveness_failed"] == 0,
        "recovery": row["recovery_s"] <= TARGETS["recovery_s"],
    }


def markdown(report: dict[str, dict[str, Any]]) -> str:
    """One row per server and multiple: medians, with every run's value in brackets."""

    def cell(entry: dict[str, Any], figure: str, fmt: str = "{:,.0f}") -> str:
        median = entry[figure]["median"]
        if median is None:
            return "-"
        runs = ", ".join("-" if v is None else fmt.format(v) for v in entry[figure]["runs"])
        return f"{fmt.format(median)} ({runs})"

    lines = [
        "| server @ offered | capacity req/s | goodput req/s | goodput / capacity | "
        "p50 / p99 answered ms | refused | refusal p50 / p99 ms | client timeouts | "
        "slowest liveness ms, main port | health port | recovery s | load avg before | "
        "others' cores on CPU 0 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, entry in report.items():
        lines.append(
            f"| {key} | {cell(entry, 'capacity')} | {cell(entry, 'goodput_rate')} | "
            f"{cell(entry, 'goodput_share', '{:.2f}')} | "
            f"{cell(entry, 'answered_p50_ms', '{:.1f}')} / "
            f"{cell(entry, 'answered_p99_ms', '{:.1f}')} | {cell(entry, 'refused')} | "
            f"{cell(entry, 'refusal_p50_ms', '{:.1f}')} / "
            f"{cell(entry, 'refusal_p99_ms', '{:.1f}')} | {cell(entry, 'timeouts')} | "
            f"{cell(entry, 'liveness_max_ms', '{:.0f}')} | "
            f"{cell(entry, 'health_liveness_max_ms', '{:.0f}')} | "
            f"{cell(entry, 'recovery_s', '{:.1f}')} | "
            f"{cell(entry, 'loadavg_1m_before', '{:.1f}')} | "
            f"{', '.join(f'{v:.2f}' for v in entry['others_on_cpu0'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
