"""A worker killed (SIGKILL) mid-training: the job resumes from its saved dataset when the
worker comes back, no version appears in between, and a repeat of the event starts nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitors.broker import EmbeddedBroker, create_topics
from registry_client import LocalRegistry
from tests._support import free_port
from tests.monitors.retrain._traffic import drifted, publish
from tests.monitors.retrain._worker import post_event, start_worker, wait_until

pytestmark = pytest.mark.e2e

SECRET = "restart-secret"


def status(*args: str) -> str:
    """``python -m monitors retrain status ...``'s output (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "monitors", "retrain", "status", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def blocked_training(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker
) -> tuple[dict[str, Any], dict[str, Any], Path, Path]:
    """Drifted, labelled traffic in the topics, and a worker's config whose trainer notes its
    start in ``marker`` and then waits (up to 120 s) while ``block`` exists; with the drift
    event's data. (config, data, marker, block)"""
    asyncio.run(create_topics(broker.bootstrap_servers, ["inference-log", "model-feedback"], 3))
    x, y = drifted(700)
    asyncio.run(publish(broker.bootstrap_servers, x, y, labelled=700))
    marker = tmp_path / "training-started"
    block = tmp_path / "training-started.block"
    block.touch()
    config = {
        "secret": SECRET,
        "state_dir": str(tmp_path / "state"),
        "kafka": {"bootstrap_servers": broker.bootstrap_servers},
        "registry_root": str(demo_registry),
        "trainer": "tests.monitors.retrain._trainers:BlockingTrainer",
        "trainer_options": {"marker": str(marker)},
        "dataset": {"min_labelled_rows": 200},
        "canary": {"enabled": False},
        "http": {"port": free_port()},
    }
    now = time.time()
    data = {"model": "breast_cancer", "version": "1",
            "window": {"id": "w1", "start_time": now - 60, "end_time": now}}  # fmt: skip
    return config, data, marker, block


def test_a_worker_killed_mid_training_resumes_the_job_and_registers_once(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker
) -> None:
    config, data, marker, block = blocked_training(tmp_path, demo_registry, broker)
    with start_worker(tmp_path, config) as (proc, url):
        answer = post_event(url, SECRET, "w1", data)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job"]
        wait_until("training started", marker.exists)
        job: dict[str, Any] = httpx.get(f"{url}/jobs/{job_id}").json()
        assert job["state"] == "training"
        proc.kill()
        proc.wait()
    assert LocalRegistry(demo_registry).versions("breast_cancer") == ["1", "2"]
    block.unlink()
    with start_worker(tmp_path, config, "worker-again") as (_, url):
        repeat = post_event(url, SECRET, "w1", data)
        assert repeat.json() == {"outcome": "duplicate", "job": None}

        def finished() -> dict[str, Any] | None:
            doc: dict[str, Any] = httpx.get(f"{url}/jobs/{job_id}").json()
            return doc if doc["state"] in ("registered", "failed", "rejected") else None

        job = wait_until("the job resumed and ended", finished)
        jobs = httpx.get(f"{url}/jobs").json()["jobs"]
        online = status("--url", url)
    offline = status("--config", str(tmp_path / "worker.yaml"), "--job", job_id, "--json")
    assert job_id in online
    assert "registered" in online
    assert "training" in online, "seconds per stage"
    assert json.loads(offline)["state"] == "registered"
    assert job["state"] == "registered", job["reason"]
    assert job["resumed"] == 1
    assert len(marker.read_text().split()) == 2, "trained once in each worker"
    assert [j["id"] for j in jobs] == [job_id], "the repeat made no second job"
    registry = LocalRegistry(demo_registry)
    assert registry.versions("breast_cancer") == ["1", "2", "3"]
    assert job["candidate"] == "3"
    assert asyncio.run(registry.fetch("breast_cancer", "3")).metadata.validation is not None


def test_a_worker_stopped_mid_training_exits_at_once_and_keeps_the_job(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker
) -> None:
    # SIGTERM cancelled the job's task, but the process then waited for the training thread to
    # finish: a pod being replaced sat out its grace period, Ctrl-C on `make serve` hung
    config, data, marker, block = blocked_training(tmp_path, demo_registry, broker)
    with start_worker(tmp_path, config) as (proc, url):
        job_id = post_event(url, SECRET, "w1", data).json()["job"]
        wait_until("training started", marker.exists)
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    assert block.exists(), "the training was still waiting"
    offline = status("--config", str(tmp_path / "worker.yaml"), "--job", job_id, "--json")
    assert json.loads(offline)["state"] == "training", "resumed at the next start"
    assert LocalRegistry(demo_registry).versions("breast_cancer") == ["1", "2"]
