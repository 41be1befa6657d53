"""The serving benchmark: the gateway, its peers and baselines side by side, open loop.

Every server runs alone, its whole process tree pinned to CPU 0 (``taskset -c 0``), and the
generator runs on CPU 1; each is measured ``--repeats`` times in alternating order and the
tables give medians. For each server: the highest offered rate whose p99 stays within 50 ms
with no failures (``find_max_rate``), and p50/p99 at a fixed moderate rate. The scenarios and
servers are in ``loadtests/scenarios.py``; peers run from their own virtualenvs
(``loadtests/peers/setup.sh``, made on first use).

``python -m loadtests.bench_serving [--repeats 3] [--scenarios mlp heavy] [--servers gateway]``
writes ``loadtests/results/serving-<time>.json``, ``serving.md`` and ``serving.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtests.machine import pin_process
from loadtests.models import register_benchmark_models
from loadtests.openloop import find_max_rate, run
from loadtests.scenarios import MAX_DELAY_MS, PEERS, SCENARIOS, Scenario, Server, request_body
from monitors.broker import EmbeddedBroker, create_topics

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
FIXED_RATE = {"heavy": 150.0}  # req/s of the fixed-rate latency run; 300 unless named here
P99_BOUND_MS = 50.0


@dataclass
class Bench:
    """A benchmark's working files: the registry with the benchmark models, and one scenario."""

    work: Path
    registry: Path
    files: dict[str, Path]
    scenario: Scenario


def prepare(prefix: str, scenario_name: str) -> Bench:
    """Move this process (the generator) to CPU 1, register the models in a new temporary
    directory and pick the scenario: what every single-scenario benchmark starts with."""
    os.sched_setaffinity(0, {1})
    work = Path(tempfile.mkdtemp(prefix=prefix))
    registry = work / "registry"
    files = register_benchmark_models(registry)
    scenario = next(s for s in SCENARIOS if s.name == scenario_name)
    return Bench(work, registry, files, scenario)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def peer_python(peer: str) -> str:
    """The peer's virtualenv python, made by loadtests/peers/setup.sh when missing."""
    out = subprocess.run(
        ["bash", str(ROOT / "loadtests" / "peers" / "setup.sh"), peer],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def command_for(
    scenario: Scenario, server: Server, model_file: Path, port: int, config: Path
) -> tuple[list[str], str]:
    """The command line that starts ``server`` and the path that answers 200 when ready."""
    python = sys.executable
    model = str(model_file)
    if server.kind in ("hello-raw", "hello", "baseline", "baseline-raw"):
        command = [python, "-m", "loadtests.servers", server.kind, "--port", str(port)]
        if server.kind.startswith("baseline"):
            command += ["--model", model]
        return command, "/v2/health/ready"
    if server.kind == "peer":
        assert server.peer is not None
        script = ROOT / "loadtests" / "peers" / f"{server.peer}_server.py"
        command = [peer_python(server.peer), str(script), "--model", model, "--name",
                   scenario.model, "--port", str(port), "--max-batch-size", str(server.max_batch),
                   "--max-batch-delay-ms", str(MAX_DELAY_MS)]  # fmt: skip
        return command, PEERS[server.peer].ready_path.format(name=scenario.model)
    command = [python, "-m", "gateway", "serve", "--config", str(config), "--log-level", "warning"]
    return command, "/v2/health/ready"


def gateway_config(
    scenario: Scenario, server: Server, registry: Path, port: int, broker: str | None, work: Path
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "registry": {"root": str(registry), "poll_interval_s": 60},
        "runtime": {"intra_op_threads": 1, "worker_threads": 1},
        "models": [{"name": scenario.model, "ref": f"{scenario.model}@champion"}],
        "batching": {"max_batch_delay_s": MAX_DELAY_MS / 1000},
    }
    for key, value in server.gateway.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    if broker is not None:
        config["feature_log"] = {"enabled": True, "bootstrap_servers": broker,
                                 "spool_dir": str(work / f"spool-{port}")}  # fmt: skip
    return config


@dataclass(frozen=True)
class Started:
    """A server under test: its base URL and the PID of its process (group leader)."""

    base: str
    pid: int


@contextlib.contextmanager
def running(
    scenario: Scenario, server: Server, files: dict[str, Path], registry: Path, work: Path
) -> Iterator[Started]:
    """Start the server pinned to CPU 0; yield where it listens; stop its process group."""
    port = free_port()
    broker: EmbeddedBroker | None = None
    config_path = work / f"{server.name}-{port}.yaml"
    if server.kind == "gateway":
        if server.broker:
            broker = EmbeddedBroker()
            broker.start()
            # the broker stands in for a Kafka cluster elsewhere: keep it off the server's CPU
            pin_process(broker.pid, {1})
            asyncio.run(create_topics(broker.bootstrap_servers, ["inference-log"], 3))
        bootstrap = broker.bootstrap_servers if broker else None
        config = gateway_config(scenario, server, registry, port, bootstrap, work)
        config_path.write_text(yaml.safe_dump(config))
    command, ready_path = command_for(scenario, server, files[scenario.model], port, config_path)
    log = (work / f"{scenario.name}-{server.name}-{port}.log").open("wb")
    proc = subprocess.Popen(["taskset", "-c", "0", *command], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=work)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + ready_path, timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not start; see {log.name}")
            time.sleep(0.3)
        yield Started(base, proc.pid)
    finally:
        stop_group(proc)
        log.close()
        if broker is not None:
            broker.stop()


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM the server's process group (it leads it), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader


def gateway_stats(base: str) -> dict[str, Any]:
    """Batch rows and batches so far, and shadow outcomes, from the gateway's own metrics."""
    text = httpx.get(base + "/metrics", timeout=5).text
    total = count = 0.0
    shadows: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gateway_batch_rows_sum"):
            total += float(line.split()[-1])
        elif line.startswith("gateway_batch_rows_count"):
            count += float(line.split()[-1])
        elif line.startswith("gateway_shadow_requests_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            shadows[outcome] = shadows.get(outcome, 0.0) + float(line.split()[-1])
    return {"rows": total, "batches": count, "shadows": shadows}


def mean_batch(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    batches = after["batches"] - before["batches"]
    return round((after["rows"] - before["rows"]) / batches, 2) if batches else None


def measure(scenario: Scenario, server: Server, base: str, step_s: float) -> dict[str, Any]:
    features = 30 if scenario.model == "breast_cancer" else 32
    body, headers = request_body(features, scenario.rows, scenario.binary)
    url = f"{base}/v2/models/{scenario.model}/infer"
    warm = run(url, body, 50, 2.0, headers)  # warm up connections and the model
    if warm.failed or not warm.completed:
        raise RuntimeError(f"{server.name}: warm-up failed: {warm.summary()}")
    start = gateway_stats(base) if server.kind == "gateway" else None
    max_rate, steps = find_max_rate(url, body, P99_BOUND_MS, start_rate=scenario.start_rate,
                                    step_s=step_s, precision=0.08, headers=headers)  # fmt: skip
    result: dict[str, Any] = {"max_rate": max_rate, "steps": steps}
    if start is not None:
        searched = gateway_stats(base)
        result["mean_batch_rows"] = mean_batch(start, searched)  # over the whole search
        if max_rate:  # and at the rate found: what batching reaches under that load
            run(url, body, max_rate, step_s, headers)
            result["mean_batch_rows_at_max"] = mean_batch(searched, gateway_stats(base))
    fixed_rate = FIXED_RATE.get(scenario.name, 300.0)
    before = gateway_stats(base) if start is not None else None
    result["fixed"] = run(url, body, fixed_rate, 5.0, headers).summary()
    if before is not None:
        after = gateway_stats(base)
        result["mean_batch_rows_at_fixed"] = mean_batch(before, after)
        result["shadows"] = after["shadows"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", nargs="+", default=[s.name for s in SCENARIOS])
    parser.add_argument("--servers", nargs="+", help="only servers whose name holds one of these")
    parser.add_argument("--step-s", type=float, default=2.5, help="seconds per rate step")
    parser.add_argument("--replot", type=Path, help="only redo serving.md/.png from a results file")
    args = parser.parse_args()
    if args.replot is not None:
        saved = json.loads(args.replot.read_text())
        (RESULTS / "serving.md").write_text(markdown(summarize(saved["runs"])))
        plot(saved["runs"], RESULTS / "serving.png")
        return
    os.sched_setaffinity(0, {1})  # the generator's CPU; servers get CPU 0
    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    registry = work / "registry"
    files = register_benchmark_models(registry)
    plan = [
        (scenario, server)
        for scenario in SCENARIOS
        if scenario.name in args.scenarios
        for server in scenario.servers
        if not args.servers or any(part in server.name for part in args.servers)
    ]
    runs: dict[str, list[dict[str, Any]]] = {}
    started = time.time()
    for repeat in range(args.repeats):
        for scenario, server in plan if repeat % 2 == 0 else list(reversed(plan)):
            key = f"{scenario.name}/{server.name}"
            with running(scenario, server, files, registry, work) as under_test:
                result = measure(scenario, server, under_test.base, args.step_s)
            runs.setdefault(key, []).append(result)
            fixed = result["fixed"]
            print(f"[{repeat + 1}/{args.repeats} {time.time() - started:.0f}s] {key}: max "
                  f"{result['max_rate']:.0f} req/s, p50/p99 at {fixed['offered_rate']:.0f}/s "
                  f"{fixed['p50_ms']}/{fixed['p99_ms']} ms, batch "
                  f"{result.get('mean_batch_rows')}", flush=True)  # fmt: skip
    report = summarize(runs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "repeats": args.repeats, "step_s": args.step_s, "p99_bound_ms": P99_BOUND_MS,
            "peers": peer_versions(), "seconds": round(time.time() - started)}  # fmt: skip
    (RESULTS / f"serving-{stamp}.json").write_text(
        json.dumps({"meta": meta, "summary": report, "runs": runs}, indent=1, default=str)
    )
    table = markdown(report)
    (RESULTS / "serving.md").write_text(table)
    plot(runs, RESULTS / "serving.png")
    print(table)


def peer_versions() -> dict[str, str]:
    """The pinned peer packages, as their requirements files give them."""
    versions = {}
    for name in PEERS:
        path = ROOT / "loadtests" / "peers" / f"requirements-{name}.txt"
        if path.exists():
            pins = [line.strip() for line in path.read_text().splitlines()]
            versions[name] = ", ".join(p for p in pins if p and not p.startswith("#"))
    return versions


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    report: dict[str, dict[str, Any]] = {}
    for key, results in runs.items():
        batches = [r["mean_batch_rows"] for r in results if r.get("mean_batch_rows")]
        at_max = [r["mean_batch_rows_at_max"] for r in results if r.get("mean_batch_rows_at_max")]
        report[key] = {
            "max_rate_median": statistics.median(r["max_rate"] for r in results),
            "max_rate_all": [round(r["max_rate"]) for r in results],
            "fixed_rate": results[0]["fixed"]["offered_rate"],
            "fixed_p50_ms_median": statistics.median(r["fixed"]["p50_ms"] for r in results),
            "fixed_p99_ms_median": statistics.median(r["fixed"]["p99_ms"] for r in results),
            "mean_batch_rows": round(statistics.median(batches), 1) if batches else None,
            "mean_batch_rows_at_max": round(statistics.median(at_max), 1) if at_max else None,
            "shadows": results[-1].get("shadows") or None,
        }
    for scenario in {k.split("/")[0] for k in report}:
        rows = {k.split("/", 1)[1]: v for k, v in report.items() if k.startswith(scenario + "/")}
        base = rows.get("starlette-per-request")
        peers = [v["max_rate_median"] for k, v in rows.items() if k in PEERS]
        for row in rows.values():
            if base and base["max_rate_median"]:
                row["vs_per_request"] = round(row["max_rate_median"] / base["max_rate_median"], 2)
            if peers and max(peers):
                row["vs_best_peer"] = round(row["max_rate_median"] / max(peers), 2)
    return report


def markdown(report: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| scenario / server | max req/s at p99 <= 50 ms: median (runs) | x per-request | "
        "x best peer | p50 / p99 ms at fixed rate | mean batch rows (search / at max) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, row in report.items():
        each = ", ".join(f"{r:,}" for r in row["max_rate_all"])
        lines.append(
            f"| {key} | {row['max_rate_median']:,.0f} ({each})"
            f" | {row.get('vs_per_request', '')} | {row.get('vs_best_peer', '')} | "
            f"{row['fixed_p50_ms_median']:.2f} / {row['fixed_p99_ms_median']:.2f} at "
            f"{row['fixed_rate']:.0f}/s | {_batch_cell(row)} |"
        )
    return "\n".join(lines) + "\n"


def _batch_cell(row: dict[str, Any]) -> str:
    if not row.get("mean_batch_rows"):
        return ""
    at_max = row.get("mean_batch_rows_at_max")
    return f"{row['mean_batch_rows']}" + (f" / {at_max}" if at_max else "")


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = sorted({k.split("/")[0] for k in runs})
    fig, axes = plt.subplots(3, len(scenarios), figsize=(6 * len(scenarios), 13), squeeze=False)
    for col, scenario in enumerate(scenarios):
        for key, results in runs.items():
            if not key.startswith(scenario + "/"):
                continue
            steps = sorted(
                (s for r in results for s in r["steps"]), key=lambda s: s["offered_rate"]
            )
            offered = [s["offered_rate"] for s in steps]
            label = key.split("/", 1)[1]
            for row, quantile in ((0, "p50_ms"), (1, "p99_ms")):
                latencies = [min(s[quantile], 5000) for s in steps]
                axes[row][col].plot(offered, latencies, ".-", label=label)
            axes[2][col].plot(offered, [s["achieved_rate"] for s in steps], ".-", label=label)
        axes[1][col].axhline(P99_BOUND_MS, color="grey", linestyle="--", linewidth=1)
        for row, quantile in ((0, "p50"), (1, "p99")):
            axes[row][col].set(title=f"{scenario}: {quantile} latency", xscale="log",
                               yscale="log", xlabel="offered req/s",
                               ylabel=f"{quantile} ms")  # fmt: skip
        axes[2][col].set(title=f"{scenario}: throughput", xscale="log", yscale="log",
                         xlabel="offered req/s", ylabel="completed req/s")  # fmt: skip
        for ax in axes[:, col]:
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
