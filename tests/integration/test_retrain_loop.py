"""The retraining loop over real processes: gateway, embedded broker, drift monitor, worker.

Calm traffic, then drifted traffic with its labels through the feedback API: exactly one job;
a candidate better on the drifted data is registered and promoted through the canary with every
request answered; a worse candidate is rejected at validation and never serves.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.feedback_client import send_feedback
from monitors.broker import EmbeddedBroker, create_topics
from registry_client import LocalRegistry
from tests._support import free_port, start_gateway, start_monitor
from tests.monitors.retrain._traffic import X, Y, drifted
from tests.monitors.retrain._worker import start_worker, wait_until

pytestmark = pytest.mark.e2e

SECRET = "loop-secret"
RETRAIN_TOKEN = "retrain-t0ken"
DRIFT = "io.model-gateway.drift.detected"
DEGRADED = "io.model-gateway.performance.degraded"
TERMINAL = ("rejected", "promoted", "rolled_back", "failed", "registered")


class Traffic:
    """Requests of the given rows, round and round, by a few concurrent clients in a thread,
    each answer's label sent back through the feedback API; every answer is kept."""

    def __init__(self, url: str, x: np.ndarray, y: np.ndarray, prefix: str) -> None:
        self.url, self.x, self.y, self.prefix = url, x, y, prefix
        self.answers: list[tuple[int, str, int, int]] = []  # status, version, predicted, true
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def sent(self) -> int:
        return len(self.answers)

    async def _run(self) -> None:
        counter = iter(range(10**9))
        async with httpx.AsyncClient(timeout=30) as client:

            async def one() -> None:
                while not self._stop.is_set():
                    labels = []
                    for _ in range(10):
                        n = next(counter)
                        i = n % len(self.x)
                        body = {"id": f"{self.prefix}-{n}", "inputs": [
                            {"name": "input", "shape": [1, 30], "datatype": "FP32",
                             "data": self.x[i].tolist()}]}  # fmt: skip
                        try:
                            response = await client.post(
                                f"{self.url}/v2/models/breast_cancer/infer", json=body
                            )
                        except httpx.HTTPError:
                            self.answers.append((0, "", -1, int(self.y[i])))
                            continue
                        version = response.headers.get("x-model-version", "")
                        predicted = -1
                        if response.status_code == 200:
                            predicted = int(response.json()["outputs"][0]["data"][0])
                            labels.append({"id": body["id"], "label": int(self.y[i])})
                        self.answers.append(
                            (response.status_code, version, predicted, int(self.y[i]))
                        )
                    if labels:
                        await asyncio.to_thread(send_feedback, self.url, "breast_cancer", labels)

            await asyncio.gather(*(one() for _ in range(4)))


def accuracy(answers: list[tuple[int, str, int, int]], version: str) -> float:
    mine = [(p, y) for s, v, p, y in answers if s == 200 and v == version]
    return sum(p == y for p, y in mine) / len(mine)


def loop_configs(
    tmp_path: Path, registry: Path, broker: EmbeddedBroker, trainer: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    gateway = {
        "registry": {"backend": "local", "root": str(registry), "poll_interval_s": 1},
        "feature_log": {"enabled": True, "bootstrap_servers": broker.bootstrap_servers,
                        "spool_dir": str(tmp_path / "spool"), "linger_s": 0.01},
        "feedback": {"enabled": True, "spool_dir": str(tmp_path / "feedback-spool")},
        "admin": {"tokens": {"retrain": RETRAIN_TOKEN},
                  "audit_log": str(tmp_path / "audit.jsonl")},
        "routes": [{"endpoint": "breast_cancer", "variants": [
            {"name": "champion", "ref": "breast_cancer@champion", "weight": 100}]}],
    }  # fmt: skip
    worker_port, monitor_port = free_port(), free_port()
    monitor: dict[str, Any] = {
        "kafka": {"bootstrap_servers": broker.bootstrap_servers},
        "registry_root": str(registry),
        "state_dir": str(tmp_path / "monitor-state"),
        "window": {"by": "count", "size": 500, "slide": 500},
        "detector": {"min_rows": 200},
        "decision": {"consecutive": 2, "cooldown_windows": 1000},
        "webhooks": [{"name": "retrain", "url": f"http://127.0.0.1:{worker_port}/events",
                      "secret": SECRET}],
        "webhook_backoff_s": 0.2,
        "http": {"port": monitor_port},
        "performance": {"enabled": True, "window": {"by": "prediction", "size_s": 2.0,
                                                    "settle_s": 2.0},
                        "horizon_s": 3600, "min_labels": 20, "ab": {"min_samples": 50}},
    }  # fmt: skip
    worker = {
        "secret": SECRET,
        "state_dir": str(tmp_path / "retrain-state"),
        "kafka": {"bootstrap_servers": broker.bootstrap_servers},
        "registry_root": str(registry),
        "trainer": trainer,
        "dataset": {"lookback_s": 600, "min_labelled_rows": 300},
        # a quick ramp gated on errors and realized accuracy (latency out of the way: a shared
        # machine's p99 moves)
        "canary": {
            "enabled": True,
            "admin_token": RETRAIN_TOKEN,
            "steps": [25, 50],
            "interval_s": 2,
            "window_s": 10,
            "min_requests": 20,
            "max_p99_ratio": 1000,
            "min_p99_increase_s": 10,
            "quality_monitor_url": f"http://127.0.0.1:{monitor_port}",
            "quality_margin": 0.05,
            "timeout_s": 240,
            "swap_timeout_s": 60,
        },
        "http": {"port": worker_port},
    }
    return gateway, monitor, worker


def calm_then_drift(
    tmp_path: Path, registry: Path, broker: EmbeddedBroker, trainer: str
) -> tuple[dict[str, Any], list[dict[str, Any]], Traffic, float]:
    """Run the stack through calm traffic and then drifted traffic (labelled) until the job
    ends; (the job, every job, the drifted traffic, drift onset time)."""
    asyncio.run(create_topics(broker.bootstrap_servers, ["inference-log", "model-feedback"], 3))
    gateway, monitor, worker = loop_configs(tmp_path, registry, broker, trainer)
    rng = np.random.default_rng(0)
    calm_rows = rng.integers(0, len(X), 1000)
    x_drift, y_drift = drifted(1200, seed=1)
    with start_gateway(tmp_path, gateway) as gw:
        worker["canary"]["gateway_url"] = gw.url
        with (
            start_worker(tmp_path, worker) as (_, worker_url),
            start_monitor(tmp_path, monitor),
        ):
            with Traffic(gw.url, X[calm_rows], Y[calm_rows], "calm") as calm:
                wait_until("calm traffic sent", lambda: calm.sent() >= 1000)
            onset = time.time()
            with Traffic(gw.url, x_drift, y_drift, "drift") as traffic:

                def ended() -> dict[str, Any] | None:
                    jobs = httpx.get(f"{worker_url}/jobs", timeout=10).json()["jobs"]
                    return jobs[0] if jobs and jobs[0]["state"] in TERMINAL else None

                job: dict[str, Any] = wait_until("the retraining job ended", ended, 420)

                def drift_received() -> list[dict[str, Any]] | None:
                    jobs = httpx.get(f"{worker_url}/jobs", timeout=10).json()["jobs"]
                    events = [t for j in jobs for t in j["triggers"] + j["covered"]]
                    return jobs if any(t["type"] == DRIFT for t in events) else None

                # drift and degradation are both seen; whichever came second joined the job
                jobs = wait_until("the drift event received", drift_received, 120)
                job = next(j for j in jobs if j["id"] == job["id"])
            assert calm.answers
            assert all(s == 200 for s, _, _, _ in calm.answers)
    return job, jobs, traffic, onset


def test_drift_with_labels_retrains_and_promotes_a_better_model_without_a_failed_request(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker
) -> None:
    job, jobs, traffic, _ = calm_then_drift(
        tmp_path, demo_registry, broker, "monitors.retrain.demo_model:DemoTrainer"
    )
    assert job["state"] == "promoted", (job["state"], job["reason"])
    # exactly one job for the drifted champion (the new version, in the canary, may show its own
    # drift against a reference that mixes before and after: another episode, another job)
    assert [j["id"] for j in jobs if j["triggers"][0]["version"] == "1"] == [job["id"]]
    assert {t["type"] for t in job["triggers"] + job["covered"]} <= {DRIFT, DEGRADED}
    statuses = [s for s, _, _, _ in traffic.answers]
    assert statuses
    assert set(statuses) == {200}, "no failed request throughout"
    candidate = job["candidate"]
    assert LocalRegistry(demo_registry).aliases("breast_cancer")["champion"] == candidate
    report = job["report"]
    assert report["metrics"]["candidate"]["accuracy"] > report["metrics"]["champion"]["accuracy"]
    served = {v for _, v, _, _ in traffic.answers}
    assert {"1", candidate} <= served
    assert accuracy(traffic.answers, candidate) > accuracy(traffic.answers, "1")
    events = [e["event"] for e in job["rollout"]["timeline"]]
    assert events[0] == "candidate_alias"
    assert "step" in events
    assert events.index("promoted") < events.index("champion_alias")
    assert "champion_serving" in events
    assert list(job["timings"])[:6] == [
        "queued", "assembling", "training", "validating", "registering", "canary"
    ]  # fmt: skip


def test_a_worse_candidate_is_rejected_and_never_takes_traffic(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker
) -> None:
    job, jobs, traffic, _ = calm_then_drift(
        tmp_path, demo_registry, broker, "tests.monitors.retrain._trainers:FlippedTrainer"
    )
    assert job["state"] == "rejected", (job["state"], job["reason"])
    assert len(jobs) == 1
    assert job["candidate"] is None
    assert LocalRegistry(demo_registry).versions("breast_cancer") == ["1", "2"]
    assert {v for _, v, _, _ in traffic.answers} == {"1"}, "only the champion served"
    assert {s for s, _, _, _ in traffic.answers} == {200}
