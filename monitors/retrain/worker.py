"""The worker: runs each job through its stages, one job per model at a time.

Stages and what each leaves on disk (``<state_dir>/jobs/<id>/``) before the job's state moves:

    queued -> assembling -> training (dataset.npz) -> validating (candidate.onnx, candidate.json)
           -> registering (the gate's report) -> canary (the registered version) -> promoted
                                                                           | rolled_back
    assembling: too few labelled rows, or one class -> failed
    validating: worse than the champion -> rejected

A job found unfinished at start resumes at its state: the files of the earlier stages are
there (each written atomically before the state moved). Registration is one atomic call; the
version is recorded with the move to ``canary``; it is keyed by the job, so a worker killed
during it asks again on restart and gets the version the first attempt made, if it made one (a
whole version or none), and never aliases half a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from monitors.profile import PROFILE_FILE, build_model_profile
from monitors.retrain.dataset import Dataset, DatasetError, assemble
from monitors.retrain.jobs import TERMINAL, Job, JobStore
from monitors.retrain.metrics import RetrainMetrics
from monitors.retrain.rollout import RolloutError, RolloutSettings, roll_out
from monitors.retrain.settings import RetrainSettings
from monitors.retrain.trainer import Trainer, TrainerError, load_trainer
from monitors.retrain.validate import ValidationError, score, validate
from registry_client import (
    ModelMetadata,
    ModelRef,
    Registry,
    RegistryError,
    RegistryUnavailableError,
    ValidationReport,
)
from registry_client.settings import open_registry

__all__ = ["REPORT_DOCUMENT", "Worker", "rollout_settings"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

REPORT_DOCUMENT = "validation_report.json"
_DATASET = "dataset.npz"
_CANDIDATE = "candidate.onnx"
_CANDIDATE_METADATA = "candidate.json"


class _RegistryDown(Exception):
    """The registry cannot be reached: the stage is tried again later, the job keeps its
    state (a trained candidate is not thrown away for a registry restarting)."""


class _JobFailed(Exception):
    """A stage ends the job as failed (or ``state``), with the reason."""

    def __init__(self, reason: str, state: str = "failed", **changes: Any) -> None:
        super().__init__(reason)
        self.state = state
        self.changes = changes


class Worker:
    """Takes runnable jobs from the store and runs them; ``wake`` after a new job."""

    def __init__(
        self,
        settings: RetrainSettings,
        store: JobStore,
        metrics: RetrainMetrics,
        registry: Registry | None = None,
        trainer: Trainer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.registry = registry or open_registry(settings.registry)
        self.trainer = trainer or load_trainer(settings.trainer, settings.trainer_options)
        # checked at start: bad canary settings stop the worker, not a job
        self._rollout = rollout_settings(settings) if settings.canary.enabled else None
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._jobs_dir = settings.state_dir / "jobs"

    def wake(self) -> None:
        self._wake.set()

    async def champion_version(self, model: str) -> str:
        """The version the model's champion alias points at; RegistryError if none (the
        worker retrains only models it can find a champion of)."""
        return await self.registry.resolve(ModelRef(model, alias=self.settings.champion_alias))

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Start runnable jobs until stopped; on stop, cancel the running ones (their state
        stays, so the next start resumes them)."""
        self._refresh_gauge()
        for job in self.store.runnable(set()):
            if job.state != "queued":
                log.warning("job %s of %s resumes at %s", job.id, job.model, job.state)
                self.store.transition(job.id, job.state, resumed=job.resumed + 1)
        try:
            while not self._stopping:
                self._wake.clear()
                for job in self.store.runnable(set(self._running)):
                    task = asyncio.create_task(self._run_job(job.id), name=f"job:{job.id}")
                    self._running[job.model] = task
                    task.add_done_callback(functools.partial(self._done, job.model))
                await self._wake.wait()
        finally:
            tasks = list(self._running.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.registry.aclose()

    def _done(self, model: str, task: asyncio.Task[None]) -> None:
        self._running.pop(model, None)
        self._wake.set()

    # -- one job ------------------------------------------------------------------------------

    async def _run_job(self, job_id: str) -> None:
        job = self.store.get(job_id)
        assert job is not None
        folder = self._jobs_dir / job.id
        folder.mkdir(parents=True, exist_ok=True)
        waiting = ""
        try:
            while job.state not in TERMINAL:
                stage = getattr(self, f"_{job.state}")
                try:
                    job = await stage(job, folder)
                except _RegistryDown as down:
                    waiting = f"{job.state}: waiting for the registry: {down}"
                    log.warning("job %s of %s: %s", job.id, job.model, waiting)
                    job = self.store.transition(job.id, job.state, reason=waiting)
                    await asyncio.sleep(self.settings.registry_retry_s)
                    continue
                if waiting and job.reason == waiting:
                    job, waiting = self.store.transition(job.id, job.state, reason=""), ""
        except _JobFailed as failed:
            job = self._move(job, failed.state, reason=str(failed), **failed.changes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unexpected error: the job says so, the worker lives
            log.exception("job %s failed in %s", job.id, job.state)
            job = self._move(job, "failed", reason=f"{job.state}: {type(exc).__name__}: {exc}")
        log.info("job %s of %s: %s %s", job.id, job.model, job.state, job.reason)
        (folder / _DATASET).unlink(missing_ok=True)  # the report keeps what it was

    def _move(self, job: Job, state: str, **changes: Any) -> Job:
        before = job.state
        moved = self.store.transition(job.id, state, **changes)
        if state != before:
            spent = moved.timings.get(before, {})
            if "start" in spent and "end" in spent:
                self.metrics.durations.labels(before).observe(spent["end"] - spent["start"])
            self.metrics.transitions.labels(job.model, state).inc()
            self._refresh_gauge()
            log.info("job %s of %s: %s -> %s", job.id, job.model, before, state)
        return moved

    def _refresh_gauge(self) -> None:
        counts = self.store.counts()
        for state in ("queued", "assembling", "training", "validating", "registering", "canary"):
            self.metrics.jobs.labels(state).set(counts.get(state, 0))

    async def _queued(self, job: Job, folder: Path) -> Job:
        return self._move(job, "assembling")

    async def _champion(self, job: Job) -> tuple[str, ModelMetadata, Path]:
        ref = ModelRef(job.model, alias=self.settings.champion_alias)
        try:
            version = await self.registry.get(ref)
        except RegistryUnavailableError as exc:
            raise _RegistryDown(str(exc)) from exc
        except RegistryError as exc:
            raise _JobFailed(f"the champion {ref} cannot be fetched: {exc}") from exc
        return version.version, version.metadata, version.model_file

    async def _assembling(self, job: Job, folder: Path) -> Job:
        champion, metadata, _ = await self._champion(job)
        starts = [t["window_start"] for t in job.triggers if t.get("window_start") is not None]
        first = min(starts) if starts else time.time()
        start = max(0.0, first - self.settings.dataset.lookback_s)  # Kafka: no time before 0
        kafka = self.settings.kafka
        label_output = metadata.validation.label_output if metadata.validation else "label"
        job = self._move(job, "assembling", data_until=time.time(), champion=champion)
        try:
            dataset = await assemble(
                job.model,
                metadata,
                bootstrap_servers=kafka.bootstrap_servers,
                log_topic=kafka.topic,
                feedback_topic=kafka.feedback_topic,
                start=start,
                label_output=label_output,
                timeout_s=kafka.read_timeout_s,
                options=kafka.security_options(),
            )
        except DatasetError as exc:
            raise _JobFailed(f"assembling: {exc}") from exc
        summary = dataset.summary()
        minimum = self.settings.dataset.min_labelled_rows
        if dataset.rows < minimum:
            raise _JobFailed(
                f"too few labelled rows to train on: {dataset.rows} of {dataset.logged_rows} "
                f"logged rows have labels, at least {minimum} needed (dataset.min_labelled_rows)",
                dataset=summary,
                data_until=dataset.end,
            )
        counts = np.bincount(dataset.y, minlength=len(dataset.class_labels))
        if np.count_nonzero(counts) < 2:
            # a model fitted to one class answers it always, and held-out rows of that class
            # rate it perfect: the gate would let it through
            only = int(np.argmax(counts))
            name = dataset.class_labels[only] if only < len(dataset.class_labels) else only
            raise _JobFailed(
                f"the labelled rows hold only one class ({name!r}: {dataset.rows} rows): "
                "nothing to learn the others from, or to validate a candidate on",
                dataset=summary,
                data_until=dataset.end,
            )
        await asyncio.to_thread(dataset.save, folder / _DATASET)
        return self._move(job, "training", dataset=summary, data_until=dataset.end)

    def _dataset(self, job: Job, folder: Path) -> Dataset:
        path = folder / _DATASET
        if not path.is_file():
            raise _JobFailed(f"{job.state}: the assembled dataset is gone from the state folder")
        return Dataset.load(path)

    async def _training(self, job: Job, folder: Path) -> Job:
        dataset = self._dataset(job, folder)
        train, _ = dataset.split(self.settings.dataset.holdout_fraction)
        _, template, _ = await self._champion(job)
        try:
            trained = await _in_daemon_thread(
                functools.partial(self.trainer.train, train, template)
            )
        except TrainerError as exc:
            raise _JobFailed(f"training: {exc}") from exc
        await asyncio.to_thread(_write, folder / _CANDIDATE, trained.onnx)
        await asyncio.to_thread(
            _write, folder / _CANDIDATE_METADATA, trained.metadata.model_dump_json().encode()
        )
        dataset_doc = {**job.dataset, "train_rows": train.rows, "trainer": trained.info}
        return self._move(job, "validating", dataset=dataset_doc)

    async def _validating(self, job: Job, folder: Path) -> Job:
        dataset = self._dataset(job, folder)
        _, holdout = dataset.split(self.settings.dataset.holdout_fraction)
        champion, champion_metadata, champion_file = await self._champion(job)
        candidate_metadata = _candidate_metadata(folder)
        gate = self.settings.validation
        try:
            champion_scores = await asyncio.to_thread(
                score, champion_file, champion_metadata, holdout.x
            )
            candidate_scores = await asyncio.to_thread(
                score, (folder / _CANDIDATE).read_bytes(), candidate_metadata, holdout.x
            )
            passed, report = validate(
                holdout,
                champion_scores,
                candidate_scores,
                primary_metric=gate.primary_metric,
                margin=gate.margin,
                alpha=gate.alpha,
            )
        except ValidationError as exc:
            raise _JobFailed(f"validating: {exc}") from exc
        report.update(
            job=job.id,
            model=job.model,
            champion_version=champion,
            triggers=[t["event_id"] for t in job.triggers],
            data_window={"start_time": dataset.start, "end_time": dataset.end},
            train_rows=job.dataset.get("train_rows"),
        )
        if not passed:
            raise _JobFailed(f"rejected: {report['verdict']}", "rejected", report=report)
        return self._move(job, "registering", report=report, champion=champion)

    async def _registering(self, job: Job, folder: Path) -> Job:
        assert job.report is not None
        dataset = self._dataset(job, folder)
        train, holdout = dataset.split(self.settings.dataset.holdout_fraction)
        metadata = _candidate_metadata(folder)
        candidate = await asyncio.to_thread(
            score, (folder / _CANDIDATE).read_bytes(), metadata, holdout.x
        )
        validation = _validation_report(holdout, candidate, metadata)
        metadata = metadata.model_copy(update={"validation": validation})
        columns = {name: train.x[:, j] for j, name in enumerate(train.features)}
        profile, _ = build_model_profile(metadata, columns)
        documents = {
            PROFILE_FILE: profile.model_dump_json().encode(),
            REPORT_DOCUMENT: json.dumps(job.report, indent=1).encode(),
        }
        try:
            version = await self.registry.register_version(
                job.model, folder / _CANDIDATE, metadata, documents, key=f"retrain-job-{job.id}"
            )
        except RegistryUnavailableError as exc:  # keyed: asking again makes no second version
            raise _RegistryDown(str(exc)) from exc
        except RegistryError as exc:
            raise _JobFailed(f"registering: {exc}") from exc
        report = {**job.report, "candidate_version": version}
        if not self.settings.canary.enabled:
            return self._move(job, "registered", candidate=version, report=report)
        return self._move(job, "canary", candidate=version, report=report)

    async def _canary(self, job: Job, folder: Path) -> Job:
        assert job.candidate is not None
        assert job.champion is not None
        steps: list[dict[str, Any]] = list((job.rollout or {}).get("events", []))

        def on_event(kind: str, data: dict[str, Any]) -> None:
            steps.append({"event": kind, "time": time.time(), **data})
            self.store.transition(job.id, "canary", rollout={"events": steps})

        assert self._rollout is not None
        try:
            outcome = await roll_out(
                self.registry,
                self._rollout,
                model=job.model,
                endpoint=self.settings.canary.endpoints.get(job.model, job.model),
                champion=job.champion,
                candidate=job.candidate,
                on_event=on_event,
            )
        except RolloutError as exc:
            raise _JobFailed(f"canary: {exc}", rollout={"events": steps}) from exc
        rollout = {"timeline": outcome.timeline, "reason": outcome.reason}
        reason = outcome.reason if outcome.state == "rolled_back" else ""
        return self._move(job, outcome.state, rollout=rollout, reason=reason)


def rollout_settings(settings: RetrainSettings) -> RolloutSettings:
    """The rollout's settings from the worker's (raises ValueError naming what is wrong)."""
    canary = settings.canary
    token = canary.admin_token.get_secret_value() if canary.admin_token else ""
    return RolloutSettings(
        admin_url=canary.gateway_url,
        admin_token=token,
        steps=tuple(canary.steps),
        interval_s=canary.interval_s,
        window_s=canary.window_s,
        min_requests=canary.min_requests,
        max_error_rate_increase=canary.max_error_rate_increase,
        max_p99_ratio=canary.max_p99_ratio,
        min_p99_increase_s=canary.min_p99_increase_s,
        quality_monitor_url=canary.quality_monitor_url,
        quality_margin=canary.quality_margin,
        timeout_s=canary.timeout_s,
        swap_timeout_s=canary.swap_timeout_s,
        champion_alias=settings.champion_alias,
    )


async def _in_daemon_thread(call: Callable[[], _T]) -> _T:
    """``call()`` in a thread of its own that does not hold the process's exit up: a training
    may take hours, and a worker stopped meanwhile resumes the job at its next start (in the
    default executor, ``asyncio.run`` waited for it after the job was cancelled)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():  # the job was cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: _T | None = None
        error: BaseException | None = None
        try:
            result = call()
        except BaseException as exc:  # handed to the awaiting job, whatever it is
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker stopped
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="retrain-trainer", daemon=True).start()
    return await future


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with open(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
    Path(tmp).replace(path)


def _candidate_metadata(folder: Path) -> ModelMetadata:
    path = folder / _CANDIDATE_METADATA
    if not path.is_file() or not (folder / _CANDIDATE).is_file():
        raise _JobFailed("the trained candidate is gone from the state folder")
    return ModelMetadata.model_validate_json(path.read_bytes())


def _validation_report(
    holdout: Dataset, candidate: Any, metadata: ModelMetadata
) -> ValidationReport | None:
    """The candidate's held-out metrics in the form the monitor reads (its degradation
    baseline)."""
    from monitors.retrain.demo_model import validation_report

    if candidate.probs is None or candidate.probs.shape[1] != max(len(holdout.class_labels), 2):
        return None
    if len(np.unique(holdout.y)) < 2:
        return None
    report = validation_report(holdout.y, candidate.probs)
    if metadata.validation is not None:  # the champion's output names, which the candidate keeps
        names = ("label_output", "score_output")
        report = report.model_copy(update={n: getattr(metadata.validation, n) for n in names})
    return report
