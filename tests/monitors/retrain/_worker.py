"""Running the retraining worker as a process, and signed events for it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from monitors.webhooks import SIGNATURE_HEADER, drift_event, signature
from tests._support import running_process

__all__ = ["post_event", "start_worker", "wait_until"]


@contextlib.contextmanager
def start_worker(
    tmp_path: Path, config: dict[str, Any], name: str = "worker"
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m monitors retrain serve`` with ``config`` (its ``http.port`` set) until the
    block ends; yields the process and its base URL. Output goes to ``<name>.log``."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{config['http']['port']}"
    command = [sys.executable, "-m", "monitors", "retrain", "serve", "--config", str(path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with running_process(command, tmp_path / f"{name}.log", f"{url}/health", env=env) as proc:
        yield proc, url


def post_event(url: str, secret: str, window: str, data: dict[str, Any]) -> httpx.Response:
    """A drift event as the monitor signs and sends it."""
    event_id, body = drift_event("test", data["model"], data["version"], window, data)
    headers = {
        "content-type": "application/cloudevents+json",
        SIGNATURE_HEADER: signature(secret, body),
        "idempotency-key": event_id,
    }
    return httpx.post(f"{url}/events", content=body, headers=headers, timeout=10)


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout_s} s")
