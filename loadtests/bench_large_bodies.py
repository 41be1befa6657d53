"""What a large JSON body costs everyone else: the event loop's longest stall, and the p99 of
small requests, while ~10 MB OIP v2 JSON bodies arrive, parsed on a worker thread
(``server.parse_processes: 0``) or in a parse process (``1``).

Each run starts ``gateway serve`` on the demo model (30 features) with a loop watch added (a
callback every 1 ms that notes how late it ran), waits until a large body has been parsed where
the setting puts it (the first one starts the parse process), then sends one-row requests at
``--rate`` per second (open loop) for ``--calm-s`` seconds alone, then while one client sends
``--bodies`` large bodies (``--rows`` x 30 float64 values, about 10 MB) back to back. Runs
alternate the two settings.

``python -m loadtests.bench_large_bodies [--runs 3] [--rows 17000] [--bodies 8] [--rate 200]``
writes ``loadtests/results/large-bodies-<time>.json`` (with the machine) and prints, per
setting, the median and range over runs of: the longest loop stall during the large bodies,
the small requests' p99 and max then, and their p99 when calm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import yaml

from loadtests.machine import machine_info

RESULTS = Path(__file__).parent / "results"
INFER = "/v2/models/breast_cancer/infer"
_WATCH_S = 0.001


# -- the server side: ``gateway serve`` with a loop watch -----------------------------------------


def _serve(config: Path, stalls_path: Path) -> None:
    """``gateway serve --config config``, noting every loop pass later than 2 ms in
    ``stalls_path`` (``[monotonic time, seconds late]``) when it stops."""
    import gateway.http
    from gateway.cli import main

    create_app = gateway.http.create_app
    stalls: list[tuple[float, float]] = []

    async def watch() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(_WATCH_S)
            late = time.monotonic() - before - _WATCH_S
            if late > 0.002:
                stalls.append((before, late))

    def watched(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)
        lifespan = app.router.lifespan_context

        @asynccontextmanager
        async def with_watch(started: Any) -> AsyncIterator[None]:
            async with lifespan(started):
                task = asyncio.create_task(watch())
                try:
                    yield
                finally:
                    task.cancel()
                    stalls_path.write_text(json.dumps(stalls))  # noqa: ASYNC240 (at the end)

        app.router.lifespan_context = with_watch
        return app

    gateway.http.create_app = watched
    sys.exit(main(["serve", "--config", str(config), "--log-level", "warning"]))


# -- the client side ------------------------------------------------------------------------------


def large_body(rows: int) -> bytes:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer().data
    rng = np.random.default_rng(0)
    values = np.resize(data, (rows, 30)) * (1 + 0.01 * rng.normal(size=(rows, 30)))
    tensor = {"name": "input", "shape": [rows, 30], "datatype": "FP32", "data": values.tolist()}
    return orjson.dumps({"inputs": [tensor]})


SMALL = orjson.dumps(
    {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1.0] * 30}]}
)


async def small_load(
    url: str, rate: float, stop: asyncio.Event, latencies: list[tuple[float, float]]
) -> None:
    """One-row requests at ``rate`` a second (open loop) until ``stop``; (sent at, seconds)."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def one(sent: float) -> None:
            response = await client.post(INFER, content=SMALL)
            assert response.status_code == 200, response.text
            latencies.append((sent, time.monotonic() - sent))

        tasks = set()
        start = time.monotonic()
        count = 0
        while not stop.is_set():
            due = start + count / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            count += 1
        await asyncio.gather(*tasks)


@contextlib.contextmanager
def demo_gateway(
    registry: Path, processes: int, command: Callable[[Path], list[str]]
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A gateway on the demo model with ``processes`` parse processes, started by
    ``command(its config file)``, ready: its process and URL. Stopped on leaving."""
    with tempfile.TemporaryDirectory() as tmp:
        port = 18000 + int(time.time() * 1000) % 1000
        config = Path(tmp) / "gateway.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "server": {"port": port, "parse_processes": processes},
                    "registry": {"backend": "local", "root": str(registry)},
                    "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
                }
            )
        )
        proc = subprocess.Popen(command(config))
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the gateway did not start")
                time.sleep(0.2)
            yield proc, url
        finally:
            proc.terminate()
            proc.wait(60)


@contextlib.contextmanager
def server(registry: Path, processes: int) -> Iterator[tuple[str, list[tuple[float, float]]]]:
    """A watched ``gateway serve`` on the demo model, ready: its URL and, once it has stopped,
    its loop's stalls."""
    stalls: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        stalls_path = Path(tmp) / "stalls.json"

        def watched(config: Path) -> list[str]:
            return [sys.executable, "-m", "loadtests.bench_large_bodies", "--serve",
                    str(config), str(stalls_path)]  # fmt: skip

        try:
            with demo_gateway(registry, processes, watched) as (_, url):
                yield url, stalls
        finally:
            if stalls_path.exists():  # written by the server as it stopped
                stalls.extend(json.loads(stalls_path.read_text()))


async def measure(
    args: argparse.Namespace, url: str, where: str, body: bytes
) -> tuple[float, float, list[tuple[float, float]], list[float]]:
    """Small requests, calm then with the large bodies: (start and end of the large bodies,
    the small requests' (sent at, seconds), each large body's seconds)."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while True:  # the first large body starts the parse process
            response = await client.get("/metrics")
            if f'gateway_large_bodies_total{{parsed_in="{where}"}}' in response.text:
                break
            assert (await client.post(INFER, content=body)).status_code == 200
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        latencies: list[tuple[float, float]] = []
        stop = asyncio.Event()
        load = asyncio.create_task(small_load(url, args.rate, stop, latencies))
        await asyncio.sleep(args.calm_s)
        begin = time.monotonic()
        large = []
        for _ in range(args.bodies):
            sent = time.monotonic()
            response = await client.post(INFER, content=body)
            assert response.status_code == 200, response.text
            large.append(time.monotonic() - sent)
        end = time.monotonic()
        stop.set()
        await load
    return begin, end, latencies, large


def one_run(
    args: argparse.Namespace, registry: Path, processes: int, body: bytes
) -> dict[str, Any]:
    with server(registry, processes) as (url, stalls):
        where = "process" if processes else "thread"
        begin, end, latencies, large = asyncio.run(measure(args, url, where, body))
    assert stalls, "the loop watch noted nothing"
    during = [late for at, late in stalls if begin <= at <= end]
    calm = sorted(s for sent, s in latencies if sent < begin)
    busy = sorted(s for sent, s in latencies if begin <= sent <= end)
    if not busy or not calm:
        raise SystemExit(
            "no small request went out beside the large bodies, or before them: send more or "
            "larger bodies (--bodies, --rows), or a longer --calm-s"
        )
    return {
        "parse_processes": processes,
        "body_bytes": len(body),
        "max_stall_ms": 1e3 * max(during, default=0.0),
        "stalls_over_20ms": sum(1 for late in during if late > 0.02),
        "small_p99_ms": 1e3 * busy[int(0.99 * (len(busy) - 1))],
        "small_max_ms": 1e3 * busy[-1],
        "small_requests": len(busy),
        "calm_p99_ms": 1e3 * calm[int(0.99 * (len(calm) - 1))],
        "large_median_s": statistics.median(large),
    }


def summary(runs: list[dict[str, Any]], key: str) -> str:
    values = [run[key] for run in runs]
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def run_all(args: argparse.Namespace) -> None:
    from gateway.demo import build_demo_registry

    body = large_body(args.rows)
    print(f"large body: {args.rows} rows x 30, {len(body) / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "registry"
        build_demo_registry(registry)
        runs = []
        for _ in range(args.runs):
            for processes in (0, 1):
                run = one_run(args, registry, processes, body)
                print(json.dumps(run))
                runs.append(run)
    keys = ["max_stall_ms", "stalls_over_20ms", "small_p99_ms", "small_max_ms", "calm_p99_ms"]
    for processes in (0, 1):
        mine = [run for run in runs if run["parse_processes"] == processes]
        figures = ", ".join(f"{key} {summary(mine, key)}" for key in keys)
        print(f"parse_processes {processes}: {figures}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"large-bodies-{time.strftime('%Y%m%d-%H%M%S')}.json"
    doc = {"machine": machine_info(), "args": vars(args), "runs": runs}
    path.write_text(json.dumps(doc, indent=1))
    print(f"written {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=17_000)
    parser.add_argument("--bodies", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200.0, help="small requests a second")
    parser.add_argument("--calm-s", type=float, default=3.0)
    parser.add_argument("--serve", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(*args.serve)
    else:
        run_all(args)


if __name__ == "__main__":
    main()
