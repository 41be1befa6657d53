"""Where a request's time goes in the gateway: py-spy samples under open-loop load, by phase.

Starts the serving benchmark's MLP gateway with batching and the feature log (CPU 0, its
embedded broker on CPU 1), sends single-row OIP v2 JSON requests at ``--rate`` from CPU 1,
and samples the gateway with py-spy meanwhile. Each sample is put in the phase of its innermost
frame that belongs to one (parse, validate, route, queue, batch, run, encode, log, metrics,
http, endpoint, outcome); what is left is the event loop itself (uvloop's C code: epoll,
socket reads and writes) and asyncio. Shares are of the event-loop thread's busy samples
(the benchmark MLP's batches run on it too); CPU microseconds per request come from the
process's CPU time over the sampled window.

``--refusing`` profiles ``bench_cpu``'s gateway that refuses every request (429) instead.

``python -m loadtests.profile_serving [--rate 6000] [--seconds 8] [--no-log | --refusing]
[--samples FILE]`` prints a table (and keeps the raw stacks in FILE for a closer look).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from loadtests.bench_cpu import REFUSING, REFUSING_HEADERS
from loadtests.bench_serving import prepare, running
from loadtests.openloop import Result, run
from loadtests.scenarios import request_body

# (phase, file fragment, function names or None for any) checked from the innermost frame out
_PHASES: list[tuple[str, str, tuple[str, ...] | None]] = [
    ("metrics", "prometheus_client/", None),
    ("log", "gateway/featurelog/records.py", None),
    ("log", "gateway/featurelog/log.py", None),
    ("log", "gateway/featurelog/kafka_sink.py", None),
    ("log", "monitors/schema.py", None),
    ("log", "monitors/_columnar.py", None),
    ("log", "aiokafka/", None),
    ("run", "onnxruntime/", None),
    ("run", "gateway/serving/runtime.py", ("run",)),
    ("parse", "gateway/protocol/v2.py", ("parse_infer_request", "_parse_input", "_from_json")),
    ("parse", "gateway/protocol/_json.py", None),
    ("parse", "gateway/protocol/encoding.py", ("decode_body",)),
    ("encode", "gateway/protocol/v2.py", ("render_infer_response",)),
    ("encode", "gateway/http/endpoints.py", ("render",)),
    ("validate", "gateway/inference.py", ("validate_inputs",)),
    ("route", "gateway/traffic/router.py", None),
    ("route", "gateway/traffic/routes.py", None),
    ("queue", "gateway/serving/batcher.py", ("enqueue", "_take", "_wait_for_batch", "_work")),
    ("batch", "gateway/serving/batcher.py", ("_run", "_resolve", "_cancel_timer")),
    ("http", "gateway/http/server.py", None),
    ("event loop and asyncio", "gateway/serve.py", None),  # reached from the loop's own frames
    ("endpoint", "gateway/http/endpoints.py", None),  # request ids, the drivers
    ("outcome", "gateway/inference.py", None),  # recording the outcome, stats, shadows
    ("other gateway code", "gateway/", None),
]


def phase_of(stack: list[str]) -> str:
    """The phase of one sample, from its frames (outermost first, as py-spy writes them)."""
    for frame in reversed(stack):
        for phase, path, functions in _PHASES:
            name = frame.split(" ", 1)[0].rsplit(".", 1)[-1]
            if path in frame and (functions is None or name in functions):
                return phase
    return "event loop and asyncio"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=6000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--no-log", action="store_true", help="feature log off")
    parser.add_argument(
        "--refusing", action="store_true", help="bench_cpu's gateway refusing every request"
    )
    parser.add_argument(
        "--samples", type=Path, help="also keep py-spy's raw samples (one stack a line) here"
    )
    args = parser.parse_args()
    bench = prepare("profile-", "mlp")  # this process (the generator) on CPU 1
    work, registry, files, scenario = bench.work, bench.registry, bench.files, bench.scenario
    # the serving benchmark's own MLP server (broker, config, pinning, readiness)
    wanted = "gateway-batching" if args.no_log else "gateway-batching-logging"
    server = next(s for s in scenario.servers if s.name == wanted)
    body, headers = request_body(32, 1, False)
    if args.refusing:
        server, headers = REFUSING, {**headers, **REFUSING_HEADERS}
    with running(scenario, server, files, registry, work) as started:
        url = f"{started.base}/v2/models/mlp/infer"
        run(url, body, 50, 1.0)  # warm up
        raw = work / "samples.txt"
        results: list[Result] = []
        load = threading.Thread(
            target=lambda: results.append(run(url, body, args.rate, args.seconds + 2, headers))
        )
        load.start()
        time.sleep(1.0)
        before = cpu_seconds(started.pid)
        spy = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(started.pid),
               "-r", "500", "-d", str(round(args.seconds)),
               "--format", "raw", "-o", str(raw), "--nonblocking"]  # fmt: skip
        subprocess.run(spy, check=True, capture_output=True)
        used = cpu_seconds(started.pid) - before
        load.join()
        if args.samples is not None:
            args.samples.write_bytes(raw.read_bytes())
    summary = results[0].summary()
    phases: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = stack.split(";")
        if not frames[0].startswith("_run_module_as_main"):
            continue  # not the event loop's thread (batches of a cheap model run on it)
        phases[phase_of(frames)] += int(samples)
    total = sum(phases.values())
    per_request_us = used / (args.rate * args.seconds) * 1e6
    print(f"offered {args.rate:.0f} req/s: {summary['achieved_rate']} done, p99 "
          f"{summary['p99_ms']} ms, failed {summary['failed']}; gateway CPU {used:.2f} s over "
          f"{args.seconds:.0f} s = {per_request_us:.0f} us a request")  # fmt: skip
    print("| phase | share of samples | us a request |\n| --- | --- | --- |")
    for phase, samples_in in phases.most_common():
        share = samples_in / total
        print(f"| {phase} | {share:.1%} | {share * per_request_us:.1f} |")


if __name__ == "__main__":
    main()
