"""Reliability figures of the HTTP edge (README "Reliability"), against a real gateway process.

- hostile connections left hanging: connections of each hostile pattern (refused requests
  pipelined behind valid ones, slow and stalled heads and bodies, floods, bad versions and
  framing) that got neither their answers nor a close within 30 s;
- RSS after four parallel 256 MiB header floods (before, peak, after);
- a normal client's latency (one single-row request every 10 ms) while another client sends
  16 MiB binary requests (139,000 rows) back to back, and without it.

    python -m loadtests.http_edge [--runs 3] [--seconds 20] [--feature-log] [--gateway-src DIR]

``--gateway-src`` runs the gateway from another checkout (to compare with main); the feature
log, when on, goes to an embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import yaml

from gateway.demo import build_demo_registry
from loadtests.bench_serving import free_port, stop_group
from monitors.broker import EmbeddedBroker, create_topics

INFER = b"/v2/models/breast_cancer/infer"
BIG_ROWS = 139_000  # 16.7 MB of FP32: just under the default 16 MiB body limit


def _post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n" % (path, len(body))
    return head + extra + b"\r\n" + body


_ROW = orjson.dumps(
    {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1.0] * 30}]}
)
_GOOD = _post(INFER, _ROW)
# (name, what is sent at once, seconds between the extra lines or 0, the extra line or None,
# the answers owed: every valid request's and the refusal's, or a 408 for a head that stalls)
_PATTERNS: list[tuple[str, bytes, float, bytes | None, int]] = [
    ("valid, absolute-form URL over 64 KiB, valid",
     _GOOD + b"GET http://x/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n" + _GOOD, 0, None,
     2),
    ("valid, URL over 64 KiB on POST, valid",
     _GOOD + _post(b"/" + b"a" * 70_000, b"{}") + _GOOD, 0, None, 2),
    ("valid, garbage line", _GOOD + b"\x00\x01 garbage\r\n\r\n", 0, None, 2),
    ("HTTP/0.9 line", b"GET /v2\r\n\r\n", 0, None, 1),
    ("HTTP/3.0", b"GET /v2 HTTP/3.0\r\nHost: t\r\n\r\n", 0, None, 1),
    ("no Host", b"GET /v2 HTTP/1.1\r\n\r\n", 0, None, 1),
    ("gzip transfer coding", b"POST /v2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked"
     b"\r\n\r\n0\r\n\r\n", 0, None, 1),
    ("Content-Length 1 GiB, no body",
     b"POST " + INFER + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 1073741824\r\n\r\n", 0, None, 1),
    ("Expect with 1 GiB", b"POST " + INFER + b" HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
     b"Content-Length: 1073741824\r\n\r\n", 0, None, 1),
    ("20,000 headers", b"GET /v2 HTTP/1.1\r\nHost: t\r\n" + b"x-a: 1\r\n" * 20_000 + b"\r\n", 0,
     None, 1),
    ("8 MiB header", b"GET /v2 HTTP/1.1\r\nHost: t\r\nx-a: " + b"a" * (8 << 20) + b"\r\n\r\n", 0,
     None, 1),
    ("head stalled half way", b"GET /v2 HTTP/1.1\r\nHost: t\r\n", 0, None, 1),
    ("header line every 4 s", b"GET /v2 HTTP/1.1\r\nHost: t\r\n", 4, b"x-slow: 1\r\n", 1),
    ("body stalled half way", b"POST " + INFER + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 100"
     b"\r\n\r\n{", 0, None, 0),
]  # fmt: skip


@contextlib.contextmanager
def gateway(work: Path, feature_log: bool, src: str | None) -> Iterator[tuple[str, int, int]]:
    """A gateway with default server settings on the demo model; yields (url, port, pid)."""
    registry = work / "registry"
    if not registry.exists():
        build_demo_registry(registry)
    port = free_port()
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "registry": {"root": str(registry), "poll_interval_s": 60},
        "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
    }
    broker = EmbeddedBroker() if feature_log else None
    if broker is not None:
        broker.start()
        asyncio.run(create_topics(broker.bootstrap_servers, ["inference-log"], 3))
        config["feature_log"] = {"enabled": True, "bootstrap_servers": broker.bootstrap_servers,
                                 "spool_dir": str(work / f"spool-{port}")}  # fmt: skip
    path = work / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": src} if src else None
    with (work / f"gateway-{port}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--log-level",
             "warning"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            cwd=work,  # not the checkout: `python -m` would import its gateway before PYTHONPATH's
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start; see {log.name}")
            time.sleep(0.3)
        yield url, port, proc.pid
    finally:
        stop_group(proc)
        if broker is not None:
            broker.stop()


def _outcome(port: int, data: bytes, wait_s: float, more: bytes | None, owed: int) -> str:
    """Send a hostile pattern: "closed" (owed answers, then a close, within 30 s), "unanswered"
    (closed without them) or "hanging" (still open after 30 s)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        deadline = time.monotonic() + 30
        with contextlib.suppress(OSError):
            sock.sendall(data)
            while more is not None and time.monotonic() < deadline:
                sock.settimeout(wait_s)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    sock.sendall(more)
                    continue
                if not chunk:
                    break
                received += chunk
        closed = False
        while not closed and time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                chunk = b""
            received += chunk
            closed = not chunk
    answers = received.count(b"HTTP/1.1 ") - received.count(b"HTTP/1.1 100 ")
    if not closed:
        return "hanging"
    return "closed" if answers >= owed else "unanswered"


def hanging(port: int, per_pattern: int) -> dict[str, dict[str, int]]:
    """Outcomes by pattern (all patterns at once, ``per_pattern`` connections of each)."""
    with ThreadPoolExecutor(len(_PATTERNS) * per_pattern) as pool:
        futures = {
            name: [pool.submit(_outcome, port, data, wait, more, owed) for _ in range(per_pattern)]
            for name, data, wait, more, owed in _PATTERNS
        }
        return {
            name: {k: [f.result() for f in fs].count(k) for k in ("hanging", "unanswered")}
            for name, fs in futures.items()
        }


def _rss(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def header_floods(port: int, pid: int) -> dict[str, float]:
    """RSS before, at its peak and after four parallel 256 MiB header floods (MiB)."""
    before = _rss(pid)["VmRSS"]

    def flood() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: t\r\nx-flood: ")
            chunk = b"a" * (1 << 20)
            with contextlib.suppress(OSError):
                for _ in range(256):
                    sock.sendall(chunk)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: flood(), range(4)))
    time.sleep(1)
    after = _rss(pid)
    mib = 1024 * 1024
    return {"before_mib": before / mib, "peak_mib": after["VmHWM"] / mib,
            "after_mib": after["VmRSS"] / mib}  # fmt: skip


def _big_request() -> bytes:
    rows = np.random.default_rng(0).random((BIG_ROWS, 30), dtype=np.float32)
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [BIG_ROWS, 30],
                           "datatype": "FP32", "parameters": {"binary_data_size": rows.nbytes}}],
                           "parameters": {"binary_data_output": True}})  # fmt: skip
    return _post(INFER, header + rows.tobytes(), b"Inference-Header-Content-Length: %d\r\n"
                 % len(header))  # fmt: skip


def latency(url: str, port: int, seconds: float, big: bool) -> dict[str, float]:
    """A normal client's latency (ms), with or without a client looping 16 MiB requests."""
    stop = threading.Event()
    big_times: list[float] = []

    def loop_big() -> None:
        request = _big_request()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(60)
            while not stop.is_set():
                started = time.perf_counter()
                sock.sendall(request)
                buffer = b""
                while b"\r\n\r\n" not in buffer:
                    buffer += sock.recv(1 << 20)
                head, body = buffer.split(b"\r\n\r\n", 1)
                lines = head.lower().split(b"\r\n")
                length = next(int(ln[15:]) for ln in lines if ln.startswith(b"content-length:"))
                while len(body) < length:
                    body += sock.recv(1 << 20)
                assert head.startswith(b"HTTP/1.1 200"), head
                big_times.append(time.perf_counter() - started)

    thread = threading.Thread(target=loop_big, daemon=True)
    if big:
        thread.start()
        time.sleep(1)
    samples: list[float] = []
    failed = 0
    with httpx.Client(base_url=url, timeout=10) as client:
        end = time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < end:
            started = time.perf_counter()
            response = client.post(INFER.decode(), content=_ROW)
            samples.append(time.perf_counter() - started)
            failed += response.status_code != 200  # a 503: its deadline passed while it waited
            next_at += 0.01
            time.sleep(max(0.0, next_at - time.monotonic()))
    stop.set()
    if big:
        thread.join(60)
    ms = sorted(s * 1000 for s in samples)
    return {
        "requests": len(ms),
        "failed": failed,
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[int(len(ms) * 0.99)],
        "max_ms": ms[-1],
        "big_requests": len(big_times),
        "big_mean_s": statistics.mean(big_times) if big_times else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--per-pattern", type=int, default=10)
    parser.add_argument("--feature-log", action="store_true")
    parser.add_argument("--gateway-src", default=None)
    parser.add_argument("--only", choices=["hanging", "floods", "latency"], default=None)
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            result: dict[str, Any] = {}
            with gateway(Path(tmp), args.feature_log, args.gateway_src) as (url, port, pid):
                if args.only in (None, "latency"):
                    result["alone"] = latency(url, port, args.seconds / 2, big=False)
                    result["beside_16mib"] = latency(url, port, args.seconds, big=True)
                if args.only in (None, "hanging"):
                    result["hanging"] = hanging(port, args.per_pattern)
                if args.only in (None, "floods"):
                    result["floods"] = header_floods(port, pid)
            print(json.dumps(result), flush=True)
            runs.append(result)
    if any("beside_16mib" in r for r in runs):
        p99 = sorted(r["beside_16mib"]["p99_ms"] for r in runs)
        print(f"normal client p99 beside 16 MiB requests: median {statistics.median(p99):.1f} ms,"
              f" range {p99[0]:.1f}-{p99[-1]:.1f} ms over {len(p99)} runs")  # fmt: skip


if __name__ == "__main__":
    main()
