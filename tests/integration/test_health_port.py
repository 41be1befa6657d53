"""The health port end to end: real gateway processes, one whose event loop is held still.

The loop is stalled by a hook in a test-only launcher (``_stalling_gateway``), not by anything
in the gateway: while it is held, the main port's liveness probe waits for it, the health port
answers at once, and liveness there turns 503 only after ``server.health_stall_limit_s``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests._support import free_port, running_process, wait_http

pytestmark = pytest.mark.e2e

STALL_LIMIT_S = 3.0
STALL_S = 9.0


def _config(registry: Path, port: int, health_port: int, **server: Any) -> dict[str, Any]:
    return {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "health_port": health_port,
            "health_stall_limit_s": STALL_LIMIT_S,
            **server,
        },
        "registry": {"backend": "local", "root": str(registry), "poll_interval_s": 60},
        "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
    }


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / f"gateway-{config['server']['port']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _wait_for(path: Path, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout_s} s"
        time.sleep(0.02)
    return float(path.read_text())


def test_the_health_port_answers_while_the_loop_is_stalled(
    tmp_path: Path, demo_registry: Path
) -> None:
    port, health_port = free_port(), free_port()
    config = _write(tmp_path, _config(demo_registry, port, health_port))
    marker = tmp_path / "stall"
    env = {**os.environ, "STALL_MARKER": str(marker), "STALL_S": str(STALL_S)}
    command = [sys.executable, "-m", "tests.integration._stalling_gateway", "serve"]
    main, health = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{health_port}"
    with running_process(
        [*command, "--config", str(config)],
        tmp_path / "gateway.log",
        f"{main}/v2/health/ready",
        60,
        env,
    ) as proc:
        wait_http(f"{health}/v2/health/ready", 30, proc)
        # both ports give the same answers
        for path in ("/v2/health/live", "/v2/health/ready"):
            ours, theirs = httpx.get(f"{health}{path}"), httpx.get(f"{main}{path}")
            assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())
        scraped = httpx.get(f"{health}/metrics")
        assert scraped.status_code == 200
        assert "gateway_build_info" in scraped.text

        proc.send_signal(signal.SIGUSR1)
        stalled_at = _wait_for(marker, 30)
        main_probe: dict[str, float] = {}

        def probe_main() -> None:
            started = time.monotonic()
            response = httpx.get(f"{main}/v2/health/live", timeout=STALL_S + 30)
            main_probe["status"] = response.status_code
            main_probe["took_s"] = time.monotonic() - started

        waiter = threading.Thread(target=probe_main)
        waiter.start()
        answers: list[tuple[float, int, float, dict[str, Any]]] = []
        ready_when_stalled: httpx.Response | None = None
        with httpx.Client(base_url=health, timeout=5) as client:
            while not Path(f"{marker}.done").exists():
                started = time.monotonic()
                response = client.get("/v2/health/live")
                took_s = time.monotonic() - started
                answers.append(
                    (started - stalled_at, response.status_code, took_s, response.json())
                )
                if response.status_code == 503 and ready_when_stalled is None:
                    ready_when_stalled = client.get("/v2/health/ready")
                time.sleep(0.1)  # the pace of the probes, not a wait for anything
        waiter.join(STALL_S + 40)

        slowest = max(took for _, _, took, _ in answers)
        assert slowest < 1.0, answers
        assert answers[0][1] == 200, answers  # a stall shorter than the limit is not a failure
        # 200 only while the loop had beaten within the limit (it beats every 0.5 s)
        assert all(at < STALL_LIMIT_S for at, status, _, _ in answers if status == 200), answers
        failed = [(at, took, doc) for at, status, took, doc in answers if status == 503]
        assert failed, answers  # held past the limit: liveness fails
        assert all(at + took > STALL_LIMIT_S - 0.6 for at, took, _ in failed), failed
        assert "the event loop has made no progress" in failed[0][2]["error"]
        assert ready_when_stalled is not None
        assert ready_when_stalled.status_code == 503
        assert "server.health_stall_limit_s" in ready_when_stalled.json()["error"]
        # the main port's probe waited for the loop
        assert main_probe["status"] == 200
        assert main_probe["took_s"] > STALL_S - 3.0, (main_probe, answers[-1])

        # the loop is back: live and ready again on the health port
        wait_http(f"{health}/v2/health/live", 30, proc)
        wait_http(f"{health}/v2/health/ready", 30, proc)


def test_workers_share_the_health_port(tmp_path: Path, demo_registry: Path) -> None:
    port, health_port = free_port(), free_port()
    config = _write(tmp_path, _config(demo_registry, port, health_port, workers=2))
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    main, health = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{health_port}"
    with running_process(command, tmp_path / "workers.log", f"{main}/v2/health/ready", 60) as proc:
        wait_http(f"{health}/v2/health/ready", 30, proc)
        workers = _workers(proc.pid)
        assert len(workers) == 2, workers
        # one worker frozen whole (its health thread too): the other takes every connection
        os.kill(workers[0], signal.SIGSTOP)
        try:
            for _ in range(20):  # fresh connections each
                started = time.monotonic()
                live = httpx.get(f"{health}/v2/health/live", timeout=10)
                assert live.status_code == 200
                assert live.json() == {"live": True}
                assert time.monotonic() - started < 2.0
        finally:
            os.kill(workers[0], signal.SIGCONT)
        elsewhere = httpx.get(f"{health}/metrics", timeout=10)
        assert elsewhere.status_code == 404
        assert "server.port sums every worker's" in elsewhere.json()["error"]
        assert httpx.get(f"{main}/metrics", timeout=30).status_code == 200


def _workers(supervisor: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_health_port_in_use_stops_the_start(
    tmp_path: Path, demo_registry: Path, workers: int
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        health_port = taken.getsockname()[1]
        config = _write(tmp_path, _config(demo_registry, free_port(), health_port, workers=workers))
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert f"server.health_port: cannot listen on 127.0.0.1:{health_port}" in done.stderr
