"""The worker over a real broker and the local registry: dataset, training, the gate,
registration (canary off here; the end-to-end tests roll out)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from monitors.broker import EmbeddedBroker, create_topics
from monitors.retrain.jobs import TERMINAL, Job, JobStore
from monitors.retrain.metrics import RetrainMetrics
from monitors.retrain.settings import RetrainSettings
from monitors.retrain.worker import REPORT_DOCUMENT, Worker
from registry_client import LocalRegistry, ModelMetadata, Registry, RegistryUnavailableError
from registry_client.mlflow import MlflowRegistry
from tests.monitors.retrain._traffic import drifted, publish

TRIGGER = {"event_id": "e1", "type": "io.model-gateway.drift.detected", "window_start": None}


def settings(tmp_path: Path, root: Path, servers: str, **extra: Any) -> RetrainSettings:
    return RetrainSettings(
        secret="s",
        state_dir=tmp_path / "state",
        kafka={"bootstrap_servers": servers, "read_timeout_s": 60},
        registry_root=root,
        canary={"enabled": False},
        dataset={"min_labelled_rows": 200, "lookback_s": 3600, "holdout_fraction": 0.3},
        **extra,
    )


async def run_one(
    config: RetrainSettings,
    timeout_s: float = 120,
    model: str = "breast_cancer",
    trigger: dict[str, Any] = TRIGGER,
    registry: Registry | None = None,
) -> tuple[Job, str]:
    """Receive one event, run the worker until its job ends; (the job, /metrics text)."""
    store = JobStore(config.state_dir / "jobs.sqlite")
    metrics = RetrainMetrics()
    worker = Worker(config, store, metrics, registry=registry)
    running = asyncio.create_task(worker.run())
    job_id = store.receive("e1", model, dict(trigger)).job_id
    assert job_id is not None
    worker.wake()
    deadline = time.monotonic() + timeout_s
    job = store.get(job_id)
    while job is not None and job.state not in TERMINAL and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        job = store.get(job_id)
    worker.stop()
    await running
    assert job is not None
    from prometheus_client import generate_latest

    return job, generate_latest(metrics.registry).decode()


async def topics(broker: EmbeddedBroker) -> None:
    await create_topics(broker.bootstrap_servers, ["inference-log", "model-feedback"], 3)


async def test_a_better_candidate_is_registered_with_its_report_and_profile(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker
) -> None:
    await topics(broker)
    x, y = drifted(900)
    await publish(broker.bootstrap_servers, x, y, labelled=800)
    config = settings(tmp_path, demo_registry, broker.bootstrap_servers)
    job, metrics = await run_one(config)
    assert job.state == "registered", job.reason
    assert job.dataset["logged_rows"] == 900
    assert job.dataset["labelled_rows"] == 800
    assert job.dataset["train_rows"] == 560
    report = job.report
    assert report is not None
    assert report["holdout_rows"] == 240
    assert report["passed"]
    candidate, champion = report["metrics"]["candidate"], report["metrics"]["champion"]
    assert candidate["accuracy"] > champion["accuracy"] + 0.05, report["verdict"]
    assert report["triggers"] == ["e1"]
    assert report["champion_version"] == "1"
    registry = LocalRegistry(demo_registry)
    assert job.candidate == "3"
    assert registry.versions("breast_cancer") == ["1", "2", "3"]
    version = await registry.fetch("breast_cancer", "3")
    stored = json.loads(await registry.read_document("breast_cancer", "3", REPORT_DOCUMENT) or b"")
    assert stored["metrics"] == report["metrics"]
    assert await registry.read_document("breast_cancer", "3", "reference_profile.json")
    metadata: ModelMetadata = version.metadata
    assert metadata.validation is not None
    assert metadata.validation.metrics["accuracy"] == candidate["accuracy"]
    assert metadata.reference is not None
    assert metadata.reference.rows == 560
    assert registry.aliases("breast_cancer")["champion"] == "1", "the canary moves aliases"
    assert 'retrain_job_transitions_total{model="breast_cancer",state="registered"} 1.0' in metrics
    assert 'retrain_job_state_duration_seconds_count{state="training"} 1.0' in metrics
    assert not (config.state_dir / "jobs" / job.id / "dataset.npz").exists()


async def test_too_few_labels_fail_the_job_saying_so(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker
) -> None:
    await topics(broker)
    x, y = drifted(300)
    await publish(broker.bootstrap_servers, x, y, labelled=120)
    # a first window less than lookback_s after the epoch: reading starts at 0, where it asked
    # Kafka for a negative time before (ValueError, the job failed before counting labels)
    trigger = {**TRIGGER, "window_start": 100.0}
    config = settings(tmp_path, demo_registry, broker.bootstrap_servers)
    job, _ = await run_one(config, trigger=trigger)
    assert job.state == "failed"
    assert "too few labelled rows to train on: 120 of 300 logged rows" in job.reason
    assert job.dataset["labelled_rows"] == 120
    assert LocalRegistry(demo_registry).versions("breast_cancer") == ["1", "2"]


async def test_a_worse_candidate_is_rejected_and_never_registered(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker
) -> None:
    await topics(broker)
    x, y = drifted(600)
    await publish(broker.bootstrap_servers, x, y, labelled=600)
    config = settings(
        tmp_path,
        demo_registry,
        broker.bootstrap_servers,
        trainer="tests.monitors.retrain._trainers:FlippedTrainer",
    )
    job, _ = await run_one(config)
    assert job.state == "rejected", job.reason
    assert "below the champion's" in job.reason
    assert job.report is not None
    assert not job.report["passed"]
    assert job.report["significance"]["significant"]
    assert job.candidate is None
    assert LocalRegistry(demo_registry).versions("breast_cancer") == ["1", "2"]


async def test_one_class_of_labels_fails_the_job_before_training(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker
) -> None:
    # a trainer that fits one class gives a model that always answers it, and held-out rows of
    # that one class rate it perfect: it passed the gate and was registered
    await topics(broker)
    x, y = drifted(900)
    benign = y == 1
    await publish(broker.bootstrap_servers, x[benign][:500], y[benign][:500], labelled=500)
    config = settings(
        tmp_path,
        demo_registry,
        broker.bootstrap_servers,
        trainer="tests.monitors.retrain._trainers:AnyClassTrainer",
    )
    job, _ = await run_one(config)
    assert job.state == "failed", job.reason
    assert "only one class" in job.reason, job.reason
    assert "'benign': 500 rows" in job.reason, job.reason
    assert job.dataset["class_counts"] == [0, 500]
    assert job.candidate is None
    assert LocalRegistry(demo_registry).versions("breast_cancer") == ["1", "2"]


class _DownAtFirst(LocalRegistry):
    """A registry that cannot be reached for its first ``outages`` registrations."""

    def __init__(self, root: Path, outages: int) -> None:
        super().__init__(root)
        self.outages = outages

    async def register_version(self, *args: Any, **kwargs: Any) -> str:
        if self.outages:
            self.outages -= 1
            raise RegistryUnavailableError("registry at http://mlflow:5000 unreachable")
        return await super().register_version(*args, **kwargs)


async def test_a_registry_down_at_registration_is_waited_for_not_the_jobs_end(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker
) -> None:
    # MLflow restarting for a minute failed the job: the trained candidate was thrown away and
    # the drift episode's events were spent
    await topics(broker)
    x, y = drifted(900)
    await publish(broker.bootstrap_servers, x, y, labelled=800)
    config = settings(tmp_path, demo_registry, broker.bootstrap_servers, registry_retry_s=0.05)
    registry = _DownAtFirst(demo_registry, outages=2)
    job, metrics = await run_one(config, registry=registry)
    assert job.state == "registered", job.reason
    assert job.reason == ""
    assert job.candidate == "3"
    assert registry.outages == 0
    assert LocalRegistry(demo_registry).versions("breast_cancer") == ["1", "2", "3"]
    assert 'retrain_job_transitions_total{model="breast_cancer",state="failed"}' not in metrics


async def test_with_mlflow_the_candidate_is_registered_there_whole(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker, mlflow_url: str
) -> None:
    name = f"retrain-{uuid.uuid4().hex[:8]}"
    source = demo_registry / "breast_cancer" / "1"
    metadata = ModelMetadata.load(source).model_copy(update={"model_sha256": None})
    writer = MlflowRegistry(mlflow_url, tmp_path / "writer-cache", backoff_s=0.01)
    try:
        champion = await writer.register_version(name, source / "model.onnx", metadata)
        await writer.set_alias(name, "champion", champion)
    finally:
        await writer.aclose()
    await topics(broker)
    x, y = drifted(700)
    await publish(broker.bootstrap_servers, x, y, labelled=700, model=name)
    config = settings(
        tmp_path,
        demo_registry,
        broker.bootstrap_servers,
        registry={"backend": "mlflow", "mlflow_url": mlflow_url,
                  "cache_dir": str(tmp_path / "worker-cache")},
    )  # fmt: skip
    job, _ = await run_one(config, model=name)
    assert job.state == "registered", job.reason
    assert (job.champion, job.candidate) == ("1", "2")
    reader = MlflowRegistry(mlflow_url, tmp_path / "reader-cache", backoff_s=0.01)
    try:
        fetched = await reader.fetch(name, "2")
        stored = await reader.read_document(name, "2", REPORT_DOCUMENT)
        aliases = await reader.get_aliases(name)
    finally:
        await reader.aclose()
    assert fetched.metadata.validation is not None
    assert fetched.model_file.stat().st_size > 0
    assert json.loads(stored or b"")["passed"]
    assert aliases["champion"] == "1"
