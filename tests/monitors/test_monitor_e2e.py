"""End-to-end: gateway -> embedded broker -> drift monitor -> a real webhook receiver.

Undrifted traffic fires nothing; drifted traffic fires exactly one signed CloudEvent, delivered
after the receiver failed the first attempts; the monitor is killed and restarted in between,
and every window is evaluated exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from monitors.broker import EmbeddedBroker, create_topics
from tests._support import feature_log_gateway_config, free_port, start_gateway, start_monitor

pytestmark = pytest.mark.e2e

X = load_breast_cancer().data.astype(np.float32)
SECRET = "webhook-secret"


class Receiver:
    """A webhook receiver on loopback that fails its first ``fail_first`` requests."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                status = 503 if len(receiver.requests) < receiver.fail_first else 200
                receiver.requests.append((dict(self.headers.items()), body, status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def send(url: str, rows: np.ndarray, prefix: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        queue = list(enumerate(rows))

        async def worker() -> None:
            while queue:
                i, row = queue.pop()
                body = {
                    "id": f"{prefix}-{i}",
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 30],
                            "datatype": "FP32",
                            "data": row.tolist(),
                        }
                    ],
                }
                response = await client.post(url, json=body)
                assert response.status_code == 200

        await asyncio.gather(*(worker() for _ in range(12)))


def evaluated(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "windows.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_windows(state_dir: Path, count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        windows = evaluated(state_dir)
        if len(windows) >= count:
            return windows
        time.sleep(0.3)
    raise AssertionError(f"only {len(evaluated(state_dir))} of {count} windows evaluated")


def test_drift_fires_one_signed_webhook_across_a_monitor_restart(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    asyncio.run(create_topics(broker.bootstrap_servers, ["inference-log"], partitions=3))
    state = tmp_path / "state"
    config = {
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": "inference-log"},
        "registry_root": str(demo_registry),
        "state_dir": str(state),
        "window": {"by": "count", "size": 500, "slide": 500},
        "detector": {"min_rows": 200},
        "decision": {"consecutive": 2, "cooldown_windows": 100},
        "webhook_backoff_s": 0.2,
        "http": {"port": free_port()},
    }
    gateway_config = feature_log_gateway_config(
        demo_registry, broker.bootstrap_servers, tmp_path / "spool"
    )
    rng = np.random.default_rng(0)
    calm = X[rng.integers(0, len(X), 1500)]
    drifted = X[rng.integers(0, len(X), 1500)].copy()
    drifted[:, [0, 2, 3]] *= 1.6  # radius, perimeter and area of bigger tumours
    with Receiver(fail_first=2) as receiver, start_gateway(tmp_path, gateway_config) as gw:
        config["webhooks"] = [{"name": "retrain", "url": receiver.url, "secret": SECRET}]
        infer = f"{gw.url}/v2/models/breast_cancer/infer"
        with start_monitor(tmp_path, config) as (first, _):
            asyncio.run(send(infer, calm[:1000], "calm"))
            wait_windows(state, 2)
            first.kill()  # no clean shutdown: state and offsets as a crash leaves them
            first.wait()
        with start_monitor(tmp_path, config) as (_, status_url):
            asyncio.run(send(infer, calm[1000:], "calm2"))
            asyncio.run(send(infer, drifted, "drift"))
            windows = wait_windows(state, 6)
            deadline = time.monotonic() + 30
            while (
                not any(s == 200 for _, _, s in receiver.requests) and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            status = httpx.get(f"{status_url}/status").json()
            metrics = httpx.get(f"{status_url}/metrics").text
            history = httpx.get(f"{status_url}/windows/breast_cancer/1").json()["windows"]
            report = subprocess.run(
                [sys.executable, "-m", "monitors", "report", "--url", status_url,
                 "--model", "breast_cancer", "--version", "1"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
    ids = [w["window_id"] for w in windows]
    assert len(ids) == len(set(ids)) == 6, ids
    assert sum(w["rows"] for w in windows) == 3000, "every record in exactly one window"
    assert [w["status"] for w in windows[:3]] == ["ok", "ok", "ok"]
    assert [w["status"] for w in windows[3:]] == ["drift", "drift", "drift"]
    assert [s for _, _, s in receiver.requests] == [503, 503, 200], "retried, delivered once"
    headers, body, _ = receiver.requests[-1]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-signature-256"] == expected
    event = json.loads(body)
    assert event["specversion"] == "1.0"
    assert event["type"] == "io.model-gateway.drift.detected"
    assert headers["idempotency-key"] == event["id"]
    assert {r[0]["idempotency-key"] for r in receiver.requests} == {event["id"]}
    data = event["data"]
    assert data["model"] == "breast_cancer"
    assert {"mean radius", "mean perimeter", "mean area"} <= set(data["drifted_features"])
    episode = [w["id"] for w in data["episode"]["windows"]]
    drifted = [w["window_id"] for w in windows if w["status"] == "drift"]
    assert episode[:2] == drifted[:2], "the windows that made the episode"
    assert set(episode) <= set(drifted)
    assert data["window"]["id"] == drifted[1]
    assert sorted(w["window_id"] for w in history) == sorted(ids), "every window in the history"
    assert report.returncode == 0, report.stderr
    assert "mean radius" in report.stdout
    assert status["decisions"]["breast_cancer/1"]["alerts"] == 1
    assert 'monitor_webhook_deliveries_total{status="delivered",target="retrain"} 1.0' in metrics
