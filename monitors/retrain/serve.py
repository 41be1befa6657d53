"""``python -m monitors retrain serve --config FILE`` and ``... retrain status``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

__all__ = ["format_jobs", "serve", "status"]

log = logging.getLogger(__name__)


def serve(config: Path | None) -> int:
    """Run the worker and its HTTP API until SIGINT or SIGTERM."""
    from monitors.http_json import http_server
    from monitors.kafka_security import KafkaSecurityError
    from monitors.retrain.app import create_app
    from monitors.retrain.jobs import JobStore
    from monitors.retrain.metrics import RetrainMetrics
    from monitors.retrain.settings import SettingsError, load_settings
    from monitors.retrain.trainer import TrainerError
    from monitors.retrain.worker import Worker
    from monitors.sockets import listening_socket
    from monitors.state import make_state_dir

    try:
        settings = load_settings(config)
    except SettingsError as exc:
        print(f"monitors retrain: {exc}", file=sys.stderr)
        return 2
    try:
        settings.kafka.security_options()  # its TLS files, read before anything starts
        make_state_dir(settings.state_dir)
        sock = listening_socket(settings.http.host, settings.http.port, "http.port")
    except (KafkaSecurityError, OSError) as exc:
        print(f"monitors retrain: {exc}", file=sys.stderr)
        return 2
    store = JobStore(settings.state_dir / "jobs.sqlite", settings.rejected_cooldown_s)
    metrics = RetrainMetrics()

    async def main() -> None:
        worker = Worker(settings, store, metrics)
        app = create_app(
            store,
            metrics,
            settings.secret.get_secret_value(),
            settings.event_types,
            settings.http.max_body_bytes,
            worker.wake,
            worker.champion_version,
        )
        server = http_server(app, settings.http.host, settings.http.port)
        http = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not http.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.05)
        if http.done():
            await http
            raise OSError(f"cannot serve on {settings.http.host}:{settings.http.port}")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        log.info(
            "retraining worker http://%s:%d (trainer %s)",
            settings.http.host,
            settings.http.port,
            settings.trainer,
        )
        try:
            await worker.run()
        finally:
            server.should_exit = True
            await http

    try:
        asyncio.run(main())
    except (TrainerError, OSError, ValueError) as exc:  # ValueError: the canary's settings
        print(f"monitors retrain: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
        sock.close()  # uvicorn closes it when it served; not when the start failed before
    return 0


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def format_jobs(jobs: list[dict[str, Any]]) -> str:
    """A table of jobs: id, model, state, trigger, candidate, seconds per state, reason."""
    lines = [f"{'job':16}  {'model':16}  {'state':11}  {'created':8}  {'versions':9}  stages"]
    for job in jobs:
        stages = ", ".join(
            f"{state} {t['end'] - t['start']:.1f}s" if "end" in t else f"{state} ..."
            for state, t in job["timings"].items()
            if state not in ("rejected", "promoted", "rolled_back", "failed", "registered")
        )
        versions = f"{job.get('champion') or '?'}->{job.get('candidate') or '-'}"
        lines.append(
            f"{job['id']:16}  {job['model'][:16]:16}  {job['state']:11}  "
            f"{_when(job['created']):8}  {versions:9}  {stages}"
        )
        if job.get("reason"):
            lines.append(f"{'':18}{job['reason']}")
    return "\n".join(lines)


def status(url: str | None, config: Path | None, job: str | None, as_json: bool) -> int:
    """Print the worker's jobs (or one job) from its API, or straight from its state folder."""
    import json

    try:
        if url is not None:
            path = f"/jobs/{job}" if job else "/jobs"
            response = httpx.get(url.rstrip("/") + path, timeout=10)
            if response.status_code != 200:
                message = response.json().get("error", response.text)
                print(f"monitors retrain: {message}", file=sys.stderr)
                return 2
            doc = response.json()
        else:
            from monitors.retrain.jobs import JobStore
            from monitors.retrain.settings import load_settings

            settings = load_settings(config)
            store_file = settings.state_dir / "jobs.sqlite"
            if not store_file.is_file():
                print(f"monitors retrain: no job store at {store_file}", file=sys.stderr)
                return 2
            store = JobStore(store_file)
            try:
                if job:
                    found = store.get(job)
                    if found is None:
                        print(f"monitors retrain: no job {job!r}", file=sys.stderr)
                        return 2
                    doc = found.as_dict()
                else:
                    doc = {"jobs": [j.as_dict() for j in store.jobs()]}
            finally:
                store.close()
    except (httpx.HTTPError, ValueError, OSError) as exc:
        print(f"monitors retrain: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(doc, indent=1))
    else:
        print(format_jobs(doc.get("jobs", [doc])))
    return 0
