"""The serving benchmark: the gateway against a bare per-request server, side by side, open loop.

Every server runs pinned to CPU 0 (``taskset -c 0``) and the generator to CPU 1, one at a time,
repeated ``--repeats`` times in interleaved order; the tables give medians. For each server:
the highest offered rate whose p99 stays within 50 ms with no failures (``find_max_rate``), and
p50/p99 at a fixed rate. The generator's own ceiling is measured against a constant ``hello``
endpoint in the same run.

Scenarios (single-row OIP v2 JSON requests):
- ``mlp``: hello; bare Starlette per request; gateway with batching on; gateway with batching
  off; gateway with batching and the feature log on (embedded broker, pinned to CPU 1).
- ``heavy``: bare Starlette per request against the gateway with batching on, on the
  compute-heavy MLP; the gateway's mean batch size is reported.

``python -m loadtests.bench_serving [--repeats 3] [--scenarios mlp heavy]`` writes
``loadtests/results/serving-<time>.json``, ``serving.md`` and ``serving.png``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from loadtests.models import register_benchmark_models
from loadtests.openloop import find_max_rate, run
from monitors.broker import EmbeddedBroker, create_topics

RESULTS = Path(__file__).parent / "results"
FIXED_RATE = 300.0


@dataclass
class Server:
    """How to start one server under test."""

    name: str
    scenario: str
    kind: str  # hello, baseline, gateway
    model: str = "mlp"
    gateway: dict[str, Any] = field(default_factory=dict)
    broker: bool = False
    start_rate: float = 200.0


SERVERS = [
    Server("hello", "mlp", "hello"),
    Server("starlette-per-request", "mlp", "baseline"),
    Server("gateway-batching", "mlp", "gateway", gateway={"batching": {"enabled": True}}),
    Server("gateway-no-batching", "mlp", "gateway", gateway={"batching": {"enabled": False}}),
    Server(
        "gateway-batching-logging",
        "mlp",
        "gateway",
        gateway={"batching": {"enabled": True}},
        broker=True,
    ),
    Server("starlette-per-request", "heavy", "baseline", model="heavy", start_rate=50),
    Server(
        "gateway-batching",
        "heavy",
        "gateway",
        model="heavy",
        start_rate=50,
        gateway={"batching": {"enabled": True, "max_batch_size": 32}},
    ),
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running(server: Server, files: dict[str, Path], registry: Path, work: Path) -> Iterator[str]:
    """Start the server pinned to CPU 0; yield its infer URL; stop it (by its PID)."""
    port = free_port()
    broker: EmbeddedBroker | None = None
    python = sys.executable
    if server.kind == "hello":
        command = [python, "-m", "loadtests.servers", "hello", "--port", str(port)]
    elif server.kind == "baseline":
        model = str(files[server.model])
        command = [
            python,
            "-m",
            "loadtests.servers",
            "baseline",
            "--model",
            model,
            "--port",
            str(port),
        ]
    else:
        config: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": port},
            "registry": {"root": str(registry), "poll_interval_s": 60},
            "runtime": {"intra_op_threads": 1, "worker_threads": 1},
            "models": [{"name": server.model, "ref": f"{server.model}@champion"}],
            **server.gateway,
        }
        if server.broker:
            broker = EmbeddedBroker()
            broker.start()
            pin = ["taskset", "-pc", "1", str(broker.pid)]
            subprocess.run(pin, check=True, capture_output=True)
            asyncio.run(create_topics(broker.bootstrap_servers, ["inference-log"], 3))
            config["feature_log"] = {"enabled": True, "bootstrap_servers": broker.bootstrap_servers,
                                     "spool_dir": str(work / f"spool-{port}")}  # fmt: skip
        path = work / f"gateway-{port}.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [
            python,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(path),
            "--log-level",
            "warning",
        ]
    log = (work / f"{server.name}-{port}.log").open("wb")
    proc = subprocess.Popen(["taskset", "-c", "0", *command], stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = f"http://127.0.0.1:{port}/v2/health/ready"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready, timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not start; see {log.name}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v2/models/{server.model}/infer"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if broker is not None:
            broker.stop()


def body_for(model: str) -> bytes:
    rng = np.random.default_rng(0)
    row = rng.normal(size=32).astype(np.float32).round(4).tolist()
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32",
                                   "data": row}]}).encode()  # fmt: skip


def mean_batch_rows(url: str) -> float | None:
    metrics = httpx.get(url.split("/v2/")[0] + "/metrics", timeout=5).text
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith("gateway_batch_rows_sum"):
            total += float(line.split()[-1])
        elif line.startswith("gateway_batch_rows_count"):
            count += float(line.split()[-1])
    return total / count if count else None


def measure(server: Server, url: str) -> dict[str, Any]:
    body = body_for(server.model)
    run(url, body, 100, 2.0)  # warm up connections and the model
    max_rate, steps = find_max_rate(url, body, 50.0, start_rate=server.start_rate, step_s=3.0,
                                    precision=0.08)  # fmt: skip
    batch = mean_batch_rows(url) if server.kind == "gateway" else None
    fixed_rate = min(FIXED_RATE, max_rate * 0.8) if max_rate else FIXED_RATE
    fixed = run(url, body, fixed_rate, 5.0).summary()
    return {"max_rate": max_rate, "steps": steps, "fixed": fixed, "mean_batch_rows": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", nargs="+", default=["mlp", "heavy"])
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})  # the generator's CPU; servers get CPU 0
    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    registry = work / "registry"
    files = register_benchmark_models(registry)
    servers = [s for s in SERVERS if s.scenario in args.scenarios]
    runs: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(args.repeats):
        order = servers if repeat % 2 == 0 else list(reversed(servers))
        for server in order:
            key = f"{server.scenario}/{server.name}"
            with running(server, files, registry, work) as url:
                result = measure(server, url)
            runs.setdefault(key, []).append(result)
            print(f"[{repeat + 1}/{args.repeats}] {key}: max {result['max_rate']:.0f} req/s, "
                  f"p99@{result['fixed']['offered_rate']:.0f} {result['fixed']['p99_ms']} ms, "
                  f"batch {result['mean_batch_rows']}", flush=True)  # fmt: skip
    report = summarize(runs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "repeats": args.repeats, "fixed_rate": FIXED_RATE}  # fmt: skip
    (RESULTS / f"serving-{stamp}.json").write_text(
        json.dumps({"meta": meta, "summary": report, "runs": runs}, indent=1, default=str)
    )
    table = markdown(report)
    (RESULTS / "serving.md").write_text(table)
    plot(runs, RESULTS / "serving.png")
    print(table)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    report: dict[str, dict[str, Any]] = {}
    for key, results in runs.items():
        batches = [r["mean_batch_rows"] for r in results if r["mean_batch_rows"]]
        report[key] = {
            "max_rate_median": statistics.median(r["max_rate"] for r in results),
            "max_rate_all": [round(r["max_rate"]) for r in results],
            "fixed_rate": results[0]["fixed"]["offered_rate"],
            "fixed_p50_ms_median": statistics.median(r["fixed"]["p50_ms"] for r in results),
            "fixed_p99_ms_median": statistics.median(r["fixed"]["p99_ms"] for r in results),
            "mean_batch_rows": round(statistics.median(batches), 1) if batches else None,
        }
    for scenario in {k.split("/")[0] for k in report}:
        base = report.get(f"{scenario}/starlette-per-request")
        for key, row in report.items():
            if key.startswith(scenario + "/") and base and base["max_rate_median"]:
                row["vs_per_request"] = round(row["max_rate_median"] / base["max_rate_median"], 2)
    return report


def markdown(report: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| scenario / server | max req/s at p99 <= 50 ms (median; runs) | x per-request | "
        "p50 / p99 ms at fixed rate | mean batch rows |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, row in report.items():
        lines.append(
            f"| {key} | {row['max_rate_median']:.0f} ({', '.join(map(str, row['max_rate_all']))})"
            f" | {row.get('vs_per_request', '')} | {row['fixed_p50_ms_median']:.2f} / "
            f"{row['fixed_p99_ms_median']:.2f} at {row['fixed_rate']:.0f}/s | "
            f"{row['mean_batch_rows'] or ''} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = sorted({k.split("/")[0] for k in runs})
    fig, axes = plt.subplots(2, len(scenarios), figsize=(7 * len(scenarios), 9), squeeze=False)
    for col, scenario in enumerate(scenarios):
        for key, results in runs.items():
            if not key.startswith(scenario + "/"):
                continue
            steps = sorted(
                (s for r in results for s in r["steps"]), key=lambda s: s["offered_rate"]
            )
            offered = [s["offered_rate"] for s in steps]
            label = key.split("/", 1)[1]
            axes[0][col].plot(offered, [min(s["p99_ms"], 5000) for s in steps], "o-", label=label)
            axes[1][col].plot(offered, [s["achieved_rate"] for s in steps], "o-", label=label)
        axes[0][col].axhline(50, color="grey", linestyle="--", linewidth=1)
        axes[0][col].set(title=f"{scenario}: p99 latency", xscale="log", yscale="log",
                         xlabel="offered req/s", ylabel="p99 ms")  # fmt: skip
        axes[1][col].set(title=f"{scenario}: throughput", xscale="log", yscale="log",
                         xlabel="offered req/s", ylabel="completed req/s")  # fmt: skip
        for ax in axes[:, col]:
            ax.legend(fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
