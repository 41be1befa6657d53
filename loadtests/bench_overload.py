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
larger, and nothing refused or lost; ``recovery_s``, strict: to the last abnormal bin). First,
per server start (``--control``, on by default), one calm control: the same schedule with its
middle phase at the calm rate, judged by the same bins, so the machine's own abnormal bins are
known; ``recovered_s`` is the recovery against them (``recovered_s``'s docstring). The server
runs pinned to CPU 0, the generator and the
prober on CPU 1 (``loadtests/README.md``); the machine's own load is measured beside.

Where each request's time went, so that a generator that falls behind is not taken for a slow
server: the generator keeps each request's send lag (written, less scheduled), and the gateway
(``LOADTESTS_TIMINGS_FILE``, see ``gateway/http/server.py``) when it saw the request's first
byte and when it wrote the answer, per client port; joined request by request on each
connection (one request in flight on each), a latency splits into the send lag, the way to the
gateway (the kernel, and the gateway's event loop not yet reading the socket), the time in the
gateway, and the way back (the kernel, and the generator's loop not yet reading the answer).

With ``--pass-slice-s A B``, gateways with each ``admission.pass_slice_s`` (0: off) are
started in turn and offered the same capacity (the order alternates between repeats);
``--rows N`` sends N rows a request.

``python -m loadtests.bench_overload [--repeats 3] [--multiples 1 1.5 2 4] [--phase-s 10]
[--health-port] [--no-control] [--pass-slice-s 0.001 0] [--rows 1]``
writes ``loadtests/results/overload-<time>.json`` and ``overload.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from gateway.http.server import TIMINGS_ENV
from loadtests.bench_serving import P99_BOUND_MS, RESULTS, free_port, running
from loadtests.machine import machine_info
from loadtests.models import register_benchmark_models
from loadtests.openloop import Result, Sample, find_max_rate, run, run_phases_async
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
# The calm control's middle phase: the calm rate (half the capacity), so no overload at all.
CONTROL_MULTIPLE = 0.5


@dataclass(frozen=True)
class Schedule:
    calm_s: float
    phase_s: float
    recovery_s: float


def _server(
    admission: bool, logging: bool, health_port: int | None = None, slice_s: float | None = None
) -> Server:
    """The gateway under test; ``slice_s``: its ``admission.pass_slice_s`` (None: the default),
    named in the server's name when given."""
    name = f"gateway-{'admission' if admission else 'no-admission'}{'-logging' if logging else ''}"
    config: dict[str, Any] = {"batching": {"enabled": True}, "admission": {"enabled": admission}}
    if slice_s is not None:
        config["admission"]["pass_slice_s"] = slice_s
        name += f"-slice{slice_s * 1000:g}ms"
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
    timings_path: Path | None = None,
    control_bins: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """One schedule (calm, overload, recovery) with the prober beside (and a second on the
    health port, when there is one); its analysis. With ``timings_path`` (the gateway's
    ``LOADTESTS_TIMINGS_FILE``), where the overload phase's time went. ``multiple`` 0.5 is the
    calm control: the middle phase at the calm rate (``control`` in the row).
    ``control_bins``: what the control allows (``control_allowance``)."""
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
    if timings_path is not None:
        server_timings(server_pid, timings_path)  # start over: the earlier runs' are not needed

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
    control = multiple == CONTROL_MULTIPLE
    analysis = analyze(result.samples, probes[0], capacity, schedule, control_bins, control)
    analysis["waited_for_connection"] = sum(
        1 for t in result.waited or [] if schedule.calm_s <= t < schedule.calm_s + schedule.phase_s
    )
    if health_port is not None:
        slowest, failed = _liveness(probes[1], schedule.calm_s)
        analysis.update(health_liveness_max_ms=slowest, health_liveness_failed=failed)
    if timings_path is not None:
        timings = server_timings(server_pid, timings_path)
        window = (schedule.calm_s, schedule.calm_s + schedule.phase_s)
        analysis["where"] = where_time_went(result.samples, result.begin, timings, window)
    return {"multiple": multiple, "control": control,
            "offered_rate": round(capacity * multiple), **analysis,
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
    samples: list[Sample],
    probes: list[tuple[float, float | None, str]],
    capacity: float,
    schedule: Schedule,
    control_bins: tuple[int, int] | None = None,
    is_control: bool = False,
) -> dict[str, Any]:
    """The figures of one schedule's overload phase, and its recovery. ``control_bins``: the
    allowance of ``recovered_s`` from the same server's calm control (``control_allowance``; without
    it, that figure is None). ``is_control``: this is the control itself (its middle phase at
    the calm rate), and it judges itself by its own allowance."""
    start, end = schedule.calm_s, schedule.calm_s + schedule.phase_s
    calm = [s[1] for s in samples if s[0] < start and s[2] == "200" and s[1] is not None]
    phase = [s for s in samples if start <= s[0] < end]
    answered = [s[1] for s in phase if s[2] == "200" and s[1] is not None]
    refused = [s[1] for s in phase if s[2] in _REFUSED and s[1] is not None]
    good = sum(1 for lat in answered if lat <= P99_BOUND_MS / 1000)
    outcomes: dict[str, int] = {}
    for sample in phase:
        outcomes[sample[2]] = outcomes.get(sample[2], 0) + 1
    lags = [s[3] for s in phase if s[3] is not None]
    answered_lags = [s[3] for s in phase if s[2] == "200" and s[3] is not None]
    refused_lags = [s[3] for s in phase if s[2] in _REFUSED and s[3] is not None]
    liveness_max_ms, liveness_failed = _liveness(probes, start)
    calm_p99 = float(np.percentile(calm, 99)) if calm else 0.0
    goodput = good / schedule.phase_s
    settled, abnormal_bins = settled_s(samples, end, schedule.recovery_s, calm_p99)
    flags = _abnormal_bins(samples, end, schedule.recovery_s, calm_p99)
    control_figures: dict[str, Any] = {}
    if is_control:
        middle = _abnormal_bins(samples, start, schedule.phase_s, calm_p99)
        control_bins = control_allowance(middle + flags, schedule)
        control_figures = {
            "abnormal_bins_middle": sum(middle),
            "abnormal_per_s_middle": round(sum(middle) / schedule.phase_s, 2),
        }
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
        # the generator's own lag: when each request was written, less its scheduled time
        "send_lag_p50_ms": _percentile_ms(lags, 50),
        "send_lag_p99_ms": _percentile_ms(lags, 99),
        "answered_send_lag_p99_ms": _percentile_ms(answered_lags, 99),
        "refused_send_lag_p99_ms": _percentile_ms(refused_lags, 99),
        "timeouts": outcomes.get("TimeoutError", 0),
        "calm_p99_ms": round(calm_p99 * 1000, 2),
        "liveness_max_ms": liveness_max_ms,
        "liveness_failed": liveness_failed,
        "recovery_s": recovery_s(samples, end, schedule.recovery_s, calm_p99),
        "settled_s": settled,
        "abnormal_bins_after": abnormal_bins,
        "abnormal_per_s_after": round(abnormal_bins / schedule.recovery_s, 2),
        "abnormal_bin_starts_s": [round(i * _BIN_S, 1) for i, bad in enumerate(flags) if bad],
        "longest_abnormal_run_after": _longest_run(flags),
        "recovered_s": None
        if control_bins is None
        else recovered_s(flags, *control_bins, recovery_phase_s=schedule.recovery_s),
        "control_allowance_bins": None if control_bins is None else control_bins[0],
        "control_longest_run": None if control_bins is None else control_bins[1],
        **control_figures,
    }


_REFUSED = ("503", "429")
# The parts of a latency, in order (``where_time_went``).
PARTS = ("send_lag", "to_gateway", "in_gateway", "back")


def server_timings(pid: int, path: Path, timeout_s: float = 30.0) -> np.ndarray:
    """The gateway's per-request timings since the last call: rows of (client port, first
    byte seen, answer written, status); asks for them with SIGUSR1 and waits for the file."""
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway wrote no timings to {path} in {timeout_s} s")
        time.sleep(0.05)
    timings = np.fromfile(path, dtype=np.float64).reshape(-1, 4)
    path.unlink()
    return timings


def join_timings(
    samples: list[Sample], begin: float, timings: np.ndarray
) -> tuple[list[tuple[float, str, tuple[float, float, float, float]]], int]:
    """Each answered request matched with the gateway's record of it: on each connection
    (client port) the k-th request sent is the k-th the gateway saw, one being in flight at a
    time. Returns (scheduled offset, status, its latency's parts in seconds: send lag, to the
    gateway, in the gateway, back) for every match, and the number of answered requests left
    unmatched (on a connection whose counts or statuses disagree: a port reused, or a request
    the gateway answered after the client gave up on it)."""
    sent: dict[int, list[Sample]] = {}
    for sample in samples:
        if sample[3] is not None and sample[4]:
            sent.setdefault(sample[4], []).append(sample)
    seen: dict[int, list[tuple[float, float, float]]] = {}
    for port, arrived, written, status in timings.tolist():
        if arrived >= begin:  # not an earlier run's connection on the same port
            seen.setdefault(int(port), []).append((arrived, written, status))
    matched: list[tuple[float, str, tuple[float, float, float, float]]] = []
    unmatched = 0
    for port, requests in sent.items():
        requests.sort(key=lambda s: s[0] + (s[3] or 0.0))  # by when each was written
        records = sorted(seen.get(port, []))
        answered = sum(1 for s in requests if s[1] is not None)
        pairs = []
        # a last request the client gave up on may or may not have been answered
        if len(records) in (len(requests), len(requests) - 1):
            for (offset, latency, status, lag, _), (arrived, written, code) in zip(
                requests, records, strict=False
            ):
                if latency is None or lag is None:
                    continue
                if status != str(int(code)):
                    break
                at = begin + offset
                pairs.append((offset, status, (lag, arrived - (at + lag), written - arrived,
                                               at + latency - written)))  # fmt: skip
        if len(pairs) < answered:
            unmatched += answered
        else:
            matched += pairs
    return matched, unmatched


def where_time_went(
    samples: list[Sample], begin: float, timings: np.ndarray, window: tuple[float, float]
) -> dict[str, Any]:
    """For the answered (200) and the refused requests scheduled in ``window``: the p50 and
    p99 of the latency and of each of its parts, and the mean of each part over the slowest
    1% (where the tail's time went), in ms; and how many answered requests were joined."""
    matched, unmatched = join_timings(samples, begin, timings)
    report: dict[str, Any] = {"joined": len(matched), "unmatched": unmatched}
    start, end = begin + window[0], begin + window[1]
    inside = timings[(timings[:, 1] >= start) & (timings[:, 1] < end)]
    passes = inside[inside[:, 0] < 0]
    for generation in range(3):
        pauses = (passes[passes[:, 0] == -1 - generation][:, 2]
                  - passes[passes[:, 0] == -1 - generation][:, 1]) * 1000  # fmt: skip
        report[f"gc{generation}"] = {"passes": len(pauses),
                                     "max_ms": round(float(pauses.max(initial=0.0)), 3),
                                     "total_ms": round(float(pauses.sum()), 3)}  # fmt: skip
    # the gateway's longest silences: no request seen and no answer written (a long loop pass)
    events = np.sort(np.concatenate([inside[inside[:, 0] >= 0][:, 1],
                                     inside[inside[:, 0] >= 0][:, 2]]))  # fmt: skip
    gaps = np.sort(np.diff(events))[::-1][:5] * 1000 if len(events) > 1 else np.empty(0)
    report["longest_silences_ms"] = [round(float(g), 1) for g in gaps]
    for kind, statuses in (("answered", ("200",)), ("refused", _REFUSED)):
        rows = [parts for offset, status, parts in matched
                if window[0] <= offset < window[1] and status in statuses]  # fmt: skip
        if not rows:
            continue
        parts = np.asarray(rows) * 1000
        total = parts.sum(axis=1)
        tail = parts[total >= np.percentile(total, 99)]
        entry: dict[str, Any] = {"n": len(rows)}
        for name, values in (("latency", total), *zip(PARTS, parts.T, strict=True)):
            entry[name] = {"p50": round(float(np.percentile(values, 50)), 3),
                           "p99": round(float(np.percentile(values, 99)), 3)}  # fmt: skip
        entry["slowest_1pct_mean"] = {
            name: round(float(v), 3) for name, v in zip(PARTS, tail.mean(axis=0), strict=True)
        }
        report[kind] = entry
    return report


def _liveness(
    probes: list[tuple[float, float | None, str]], start: float
) -> tuple[float | None, int]:
    """The slowest answered probe from ``start`` on (ms), and how many got no 200."""
    after = [p for p in probes if p[0] >= start]
    liveness = [lat for _, lat, status in after if lat is not None and status == "200"]
    return (round(max(liveness) * 1000, 1) if liveness else None), len(after) - len(liveness)


def _abnormal_bins(
    samples: list[Sample], overload_end: float, recovery_phase_s: float, calm_p99_s: float
) -> list[bool]:
    """Per 100 ms bin of the recovery phase: whether it was abnormal (p99 of the answered
    above max(2 x calm p99, 10 ms), or anything refused or lost). A bin with no request is
    normal."""
    normal_s = max(2 * calm_p99_s, 0.010)
    count = max(1, round(recovery_phase_s / _BIN_S))
    bins: list[list[tuple[float | None, str]]] = [[] for _ in range(count)]
    for t, lat, status, *_ in samples:
        if overload_end <= t < overload_end + recovery_phase_s:
            bins[min(count - 1, int((t - overload_end) / _BIN_S))].append((lat, status))
    flags = []
    for items in bins:
        answered = [lat for lat, status in items if status == "200" and lat is not None]
        bad = len(answered) < len(items)
        flags.append(bad or bool(answered and float(np.percentile(answered, 99)) > normal_s))
    return flags


def recovery_s(
    samples: list[Sample],
    overload_end: float,
    recovery_phase_s: float,
    calm_p99_s: float,
) -> float:
    """Seconds from the overload's end to the end of the last abnormal 100 ms bin after it;
    the whole recovery phase when its last bin is still abnormal. Strict: one late stray bin
    counts as not recovered until then (``settled_s`` is the lenient reading)."""
    flags = _abnormal_bins(samples, overload_end, recovery_phase_s, calm_p99_s)
    last = max((i for i, bad in enumerate(flags) if bad), default=-1)
    return round(min((last + 1) * _BIN_S, recovery_phase_s), 2)


def settled_s(
    samples: list[Sample],
    overload_end: float,
    recovery_phase_s: float,
    calm_p99_s: float,
    stretch_s: float = 1.0,
) -> tuple[float, int]:
    """Seconds from the overload's end to the start of the first ``stretch_s`` of normal
    bins in a row (the whole phase when there is none), and how many abnormal bins the
    recovery phase held in all."""
    flags = _abnormal_bins(samples, overload_end, recovery_phase_s, calm_p99_s)
    need = max(1, round(stretch_s / _BIN_S))
    run = 0
    for index, bad in enumerate(flags):
        run = 0 if bad else run + 1
        if run == need:
            return round((index + 1 - need) * _BIN_S, 2), sum(flags)
    return recovery_phase_s, sum(flags)


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """The runs of abnormal bins: (first bin, length) each."""
    runs: list[tuple[int, int]] = []
    for index, bad in enumerate(flags):
        if bad and runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        elif bad:
            runs.append((index, 1))
    return runs


def _longest_run(flags: list[bool]) -> int:
    return max((length for _, length in _runs(flags)), default=0)


def control_allowance(calm_flags: list[bool], schedule: Schedule) -> tuple[int, int]:
    """What the calm control allows ``recovered_s``: its abnormal bins after its calm phase
    (its middle phase, at the calm rate, and the phase after it: three times the sample of
    the phase after alone), scaled to the recovery phase's length and rounded down (no more
    than its rate), and its longest run of them."""
    calm_s = schedule.phase_s + schedule.recovery_s
    scaled = sum(calm_flags) * schedule.recovery_s / calm_s
    return math.floor(scaled + 1e-9), _longest_run(calm_flags)


def recovered_s(
    flags: list[bool], allowance: int, longest_run: int, recovery_phase_s: float
) -> float:
    """The recovery measured against the machine's own noise: seconds from the overload's end
    to the earliest bin boundary after which (a) every run of abnormal bins is one the calm
    control also had (no longer than its ``longest_run``; a run is forgiven whole or not at
    all) and (b) there are no more abnormal bins than the control's ``allowance`` (its count
    in the same length of time, ``control_allowance``). A slow return (abnormal bins in
    a row, longer than calm traffic gives) is never forgiven; only stray bins are, and no more
    of them than calm traffic gave. A control with no abnormal bin forgives nothing: the
    strict figure. ``flags``: per 100 ms bin of the recovery phase, whether it was abnormal
    (``_abnormal_bins``)."""
    if allowance < 0 or longest_run < 0:
        raise ValueError(
            f"allowance and longest_run must be >= 0, got {allowance} and {longest_run}"
        )
    long_ends = [first + length for first, length in _runs(flags) if length > longest_run]
    abnormal = [i for i, bad in enumerate(flags) if bad]
    beyond = abnormal[len(abnormal) - allowance - 1] + 1 if len(abnormal) > allowance else 0
    return round(min(max([beyond, *long_ends]) * _BIN_S, recovery_phase_s), 2)


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
    parser.add_argument("--rows", type=int, default=1, help="rows a request (default 1)")
    parser.add_argument(
        "--capacity", type=float,
        help="offer multiples of this rate instead of measuring the capacity (side-by-side "
             "runs of different code on one figure)",
    )  # fmt: skip
    parser.add_argument(
        "--pass-slice-s", type=float, nargs="+",
        help="compare gateways with these admission.pass_slice_s (0: off) on one capacity, "
             "in turn (the order alternates between repeats)",
    )  # fmt: skip
    parser.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="first, per server start, one calm control schedule (the middle phase at the "
        "calm rate): the abnormal bins of calm traffic, the allowance of recovered_s",
    )
    parser.add_argument(
        "--registry", type=Path, help="the benchmark models' registry (made there if missing)"
    )
    args = parser.parse_args()
    if args.capacity is not None and args.capacity <= 0:
        parser.error(f"--capacity must be above 0, got {args.capacity}")
    if any(multiple <= 0 for multiple in args.multiples):
        parser.error(f"--multiples must all be above 0, got {args.multiples}")
    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    registry = args.registry or work / "registry"
    files = register_benchmark_models(registry)
    os.sched_setaffinity(0, {1})  # the generator's CPU; servers get CPU 0
    timings_path = work / "timings.bin"
    os.environ[TIMINGS_ENV] = str(timings_path)  # the gateways started here keep timings
    scenario = Scenario("mlp", "mlp", 1, [])
    body, headers = request_body(32, args.rows, False)
    schedule = Schedule(args.calm_s, args.phase_s, args.recovery_s)
    logging = {"both": [False, True], "on": [True], "off": [False]}[args.logging]
    runs: list[dict[str, Any]] = []
    machine_before = machine_info()
    started = time.time()
    for repeat in range(args.repeats):
        for log_on in logging:
            # measured with admission on, the first server of each log setting (the others get
            # the same), unless given
            given = {"given": args.capacity} if args.capacity else dict[str, float]()
            capacity, found = args.capacity or 0.0, given
            slices: list[float | None] = list(args.pass_slice_s or [None])
            if repeat % 2:
                slices.reverse()
            variants = [(True, s) for s in slices]
            if not args.no_baseline:
                variants.append((False, None))
            for admission, slice_s in variants:
                health_port = free_port() if args.health_port else None
                server = _server(admission, log_on, health_port, slice_s)
                with running(scenario, server, files, registry, work) as under_test:
                    url = f"{under_test.base}/v2/models/mlp/infer"
                    warm = run(url, body, 50, 2.0, headers)
                    if warm.failed or not warm.completed:
                        raise RuntimeError(f"{server.name}: warm-up failed: {warm.summary()}")
                    if not capacity:
                        capacity, found = measure_capacity(url, body, headers, args.step_s)
                        print(f"capacity {capacity:.0f} req/s ({found})", flush=True)
                    control: tuple[int, int] | None = None
                    controls = [CONTROL_MULTIPLE] if args.control else []
                    for multiple in controls + list(args.multiples):
                        row = overload_run(url, body, headers, capacity, multiple, schedule,
                                           args.probe_period_s, under_test.pid,
                                           health_port, timings_path, control)  # fmt: skip
                        if row["control"]:
                            control = (row["control_allowance_bins"],
                                       row["control_longest_run"])  # fmt: skip
                        row.update(server=server.name, repeat=repeat, capacity=capacity,
                                   capacity_found=found)  # fmt: skip
                        runs.append(row)
                        print(f"[{repeat + 1}/{args.repeats} {time.time() - started:.0f}s] "
                              f"{server.name} {_at(row)} of {capacity:.0f}: {_line(row)}",
                              flush=True)  # fmt: skip
                        time.sleep(1.0)
    report = summarize(runs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "repeats": args.repeats, "rows": args.rows, "schedule": schedule.__dict__,
            "targets": TARGETS,
            "probe_period_s": args.probe_period_s, "health_port": args.health_port,
            "control": args.control,
            "seconds": round(time.time() - started),
            "machine_before": machine_before, "machine_after": machine_info()}  # fmt: skip
    (RESULTS / f"overload-{stamp}.json").write_text(
        json.dumps({"meta": meta, "summary": report, "runs": runs}, indent=1)
    )
    table = markdown(report) + "\n" + markdown_where(runs)
    (RESULTS / "overload.md").write_text(table)
    print(table)


def _line(row: dict[str, Any]) -> str:
    return (f"goodput {row['goodput_rate']}/s ({row['goodput_share']:.0%}), p50/p99 "
            f"{row['answered_p50_ms']}/{row['answered_p99_ms']} ms, refused {row['refused']} "
            f"(p99 {row['refusal_p99_ms']} ms), timeouts {row['timeouts']}, liveness max "
            f"{row['liveness_max_ms']} ms (health port "
            f"{row.get('health_liveness_max_ms', '-')} ms), recovery {row['recovery_s']} s "
            f"(settled {row['settled_s']} s, {row['abnormal_bins_after']} abnormal bins at "
            f"{row['abnormal_bin_starts_s']} s; against the control's "
            f"{row['control_allowance_bins']} a phase (longest run {row['control_longest_run']}): "
            f"recovered {row['recovered_s']} s"
            f"{_middle(row)}), "
            f"send lag p50/p99 {row['send_lag_p50_ms']}/{row['send_lag_p99_ms']} ms "
            f"({row['waited_for_connection']} waited for a connection), "
            f"load {row['loadavg_1m_before']}, cores {row['cores']}, "
            f"server {row['server_stats']}, where {row.get('where')}")  # fmt: skip


def _middle(row: dict[str, Any]) -> str:
    if "abnormal_bins_middle" not in row:
        return ""
    return f"; {row['abnormal_bins_middle']} abnormal bins in the calm middle phase"


_FIGURES = ("capacity", "goodput_rate", "goodput_share", "answered_p50_ms", "answered_p99_ms",
            "refused", "refusal_p50_ms", "refusal_p99_ms", "timeouts", "liveness_max_ms",
            "health_liveness_max_ms", "recovery_s", "settled_s", "abnormal_bins_after",
            "abnormal_per_s_after", "longest_abnormal_run_after", "recovered_s",
            "control_allowance_bins", "control_longest_run",
            "loadavg_1m_before", "send_lag_p50_ms",
            "send_lag_p99_ms")  # fmt: skip


def _at(row: dict[str, Any]) -> str:
    return "control" if row.get("control") else f"{row['multiple']}x"


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per server and multiple: each figure's median and its runs; whether the targets hold."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in runs:
        groups.setdefault(f"{row['server']}@{_at(row)}", []).append(row)
    report: dict[str, dict[str, Any]] = {}
    for key, rows in groups.items():
        entry: dict[str, Any] = {}
        for figure in _FIGURES:
            values = [row.get(figure) for row in rows]
            known = [v for v in values if v is not None]
            entry[figure] = {"median": statistics.median(known) if known else None,
                             "runs": values}  # fmt: skip
        entry["others_on_cpu0"] = [row["cores"]["others_on_cpu0"] for row in rows]
        if rows[0]["multiple"] == 2.0 and not rows[0].get("control"):
            entry["targets_held"] = [_targets_held(row) for row in rows]
        report[key] = entry
    return report


def _targets_held(row: dict[str, Any]) -> dict[str, bool | None]:
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
        # against the calm control's noise (None without a control); the strict one above
        "recovery_vs_control": None
        if row.get("recovered_s") is None
        else row["recovered_s"] <= TARGETS["recovery_s"],
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
        "slowest liveness ms, main port | health port | recovery s (last abnormal bin) | "
        "settled s (1 s normal) | abnormal bins / s after | "
        "recovered s, against the control | load avg before | "
        "others' cores on CPU 0 |",
        "|" + " --- |" * 16,
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
            f"{cell(entry, 'settled_s', '{:.1f}')} | "
            f"{cell(entry, 'abnormal_per_s_after', '{:.1f}')} | "
            f"{cell(entry, 'recovered_s', '{:.1f}')} | "
            f"{cell(entry, 'loadavg_1m_before', '{:.1f}')} | "
            f"{', '.join(f'{v:.2f}' for v in entry['others_on_cpu0'])} |"
        )
    return "\n".join(lines) + "\n"


def markdown_where(runs: list[dict[str, Any]]) -> str:
    """Per run, answered and refused apart: the p99 of the latency the client saw and of each
    of its parts, then the mean parts of the slowest 1% (ms)."""
    lines = [
        "| server @ offered, run | requests | p99 latency | p99 send lag | p99 to gateway | "
        "p99 in gateway | p99 back | slowest 1%: send lag / to gateway / in gateway / back |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in runs:
        where = row.get("where") or {}
        for kind in ("answered", "refused"):
            entry = where.get(kind)
            if entry is None:
                continue
            tail = " / ".join(f"{entry['slowest_1pct_mean'][p]:.1f}" for p in PARTS)
            lines.append(
                f"| {row['server']}@{_at(row)}, {row['repeat'] + 1} | {kind} "
                f"{entry['n']:,} | {entry['latency']['p99']:.1f} | "
                + " | ".join(f"{entry[p]['p99']:.1f}" for p in PARTS)
                + f" | {tail} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
