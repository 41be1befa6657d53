"""What a parse process weighs: its resident memory (VmRSS) at rest and after parsing a ~10 MB
JSON body, and its peak (VmHWM), under the real ``gateway serve`` command.

Each run starts the ``gateway`` console script (what operators run; a spawned process imports
the main script of its parent, so the launcher counts) on the demo model with
``server.parse_processes: 1``, sends bodies just over 256 KiB until one was parsed in the
process (the first starts it), reads the process's memory (at rest: every module a parse
needs is imported, no large data held), then sends one ~10 MB body (``--rows`` x 30 float64
values) and reads it again.

``python -m loadtests.parse_process_memory [--runs 3] [--rows 17000]`` prints each run and the
median (range) and writes ``loadtests/results/parse-memory-<time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench_large_bodies import INFER, demo_gateway, large_body
from loadtests.machine import machine_info

RESULTS = Path(__file__).parent / "results"
_FIELDS = ("VmRSS", "VmHWM")


def _memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid``, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in _FIELDS:
            found[name] = int(value.split()[0]) / 1024
    return found


def _parse_processes(pid: int) -> list[int]:
    """The spawned pool processes among ``pid``'s children (not the resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"--multiprocessing-fork" in command and b"resource_tracker" not in command:
                found.append(int(child))
    return found


@contextlib.contextmanager
def serving(registry: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``gateway serve`` (the console script beside this Python) on the demo model, ready."""

    def command(config: Path) -> list[str]:
        return [str(Path(sys.executable).parent / "gateway"), "serve", "--config", str(config),
                "--log-level", "warning"]  # fmt: skip

    with demo_gateway(registry, 1, command) as started:
        yield started


def one_run(registry: Path, small: bytes, body: bytes) -> dict[str, Any]:
    with serving(registry) as (proc, url), httpx.Client(base_url=url, timeout=60) as client:
        while True:  # the first starts the parse process; parsed on a thread meanwhile
            assert client.post(INFER, content=small).status_code == 200
            if 'gateway_large_bodies_total{parsed_in="process"}' in client.get("/metrics").text:
                break
            time.sleep(0.2)
        (pid,) = _parse_processes(proc.pid)
        modules = Path(f"/proc/{pid}/maps").read_text()
        rest = _memory_mb(pid)
        assert client.post(INFER, content=body).status_code == 200
        after = _memory_mb(pid)
    return {
        "rest_rss_mb": rest["VmRSS"],
        "after_rss_mb": after["VmRSS"],
        "peak_rss_mb": after["VmHWM"],
        "onnxruntime_mapped": "onnxruntime" in modules,
        "small_bytes": len(small),
        "body_bytes": len(body),
    }


def summary(runs: list[dict[str, Any]], key: str) -> str:
    values = [run[key] for run in runs]
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    from gateway.demo import build_demo_registry

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=17_000)
    args = parser.parse_args()
    small, body = large_body(600), large_body(args.rows)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "registry"
        build_demo_registry(registry)
        for _ in range(args.runs):
            run = one_run(registry, small, body)
            print(json.dumps(run))
            runs.append(run)
    keys = ("rest_rss_mb", "after_rss_mb", "peak_rss_mb")
    print(", ".join(f"{key} {summary(runs, key)}" for key in keys))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"parse-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    doc = {"machine": machine_info(), "args": vars(args), "runs": runs}
    path.write_text(json.dumps(doc, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
