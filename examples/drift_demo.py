"""Watch the retraining loop close itself on the `make serve` stack.

    .venv/bin/python examples/drift_demo.py

1. routes all of ``breast_cancer``'s traffic to its champion (the admin API), so one version
   drifts;
2. sends calm traffic (rows of the training data), with labels through the feedback API;
3. sends drifted traffic (bigger tumours: radius, perimeter and area scaled by 1.6) with its
   true labels, and keeps sending until the loop has run: the monitor sees the drift and calls
   the worker's webhook; the worker assembles the logged rows with their labels, trains a
   candidate, validates it against the champion, registers it, and rolls it out through a
   canary; the champion alias moves;
4. prints each stage as it happens, then the timeline (drift onset -> webhook -> registered ->
   promoted) and the accuracy of the old and the new model on the drifted traffic they served.

Needs the `demo` extra (scikit-learn for the data), as `make serve` installs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import httpx
import numpy as np
from sklearn.datasets import load_breast_cancer

MODEL = "breast_cancer"
TERMINAL = ("rejected", "registered", "promoted", "rolled_back", "failed")


class Traffic:
    """Single-row requests by a few concurrent clients; each answer's true label is sent back
    through the feedback API; answers are kept as (version, predicted, true)."""

    def __init__(self, client: httpx.AsyncClient, x: np.ndarray, y: np.ndarray, tag: str) -> None:
        self.client, self.x, self.y, self.tag = client, x, y, tag
        self.answers: list[tuple[str, int, int]] = []
        self.failed = 0
        self._next = 0

    async def run(self, until: asyncio.Event | int, clients: int = 4) -> None:
        async def one() -> None:
            while not self._done(until):
                batch = []
                for _ in range(10):
                    n = self._next
                    self._next += 1
                    i = n % len(self.x)
                    request_id = f"{self.tag}-{time.time_ns()}-{n}"
                    body = {"id": request_id, "inputs": [{"name": "input", "shape": [1, 30],
                            "datatype": "FP32", "data": self.x[i].tolist()}]}  # fmt: skip
                    try:
                        response = await self.client.post(f"/v2/models/{MODEL}/infer", json=body)
                    except httpx.HTTPError:
                        self.failed += 1
                        continue
                    if response.status_code != 200:
                        self.failed += 1
                        continue
                    predicted = int(response.json()["outputs"][0]["data"][0])
                    version = response.headers.get("x-model-version", "?")
                    self.answers.append((version, predicted, int(self.y[i])))
                    batch.append({"id": request_id, "label": int(self.y[i])})
                if batch:
                    answer = await self.client.post(
                        f"/v2/models/{MODEL}/feedback", json={"items": batch}
                    )
                    answer.raise_for_status()

        await asyncio.gather(*(one() for _ in range(clients)))

    def _done(self, until: asyncio.Event | int) -> bool:
        if isinstance(until, int):
            return self._next >= until
        return until.is_set()

    def accuracy(self, version: str) -> tuple[float, int]:
        mine = [p == y for v, p, y in self.answers if v == version]
        return (sum(mine) / len(mine) if mine else float("nan")), len(mine)


def stamp(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 10)}"


async def watch(
    worker: str, since: float, stop: asyncio.Event, timeout_s: float
) -> dict[str, Any] | None:
    """Print the stages of each job created after ``since`` as they happen; once every such job
    has ended, return the first."""
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=worker, timeout=10) as client:
        while time.monotonic() < deadline:
            listed = (await client.get("/jobs")).json()["jobs"]
            jobs = [j for j in listed if j["created"] >= since]
            for job in reversed(jobs):
                for state, t in job["timings"].items():
                    if (job["id"], state) not in seen:
                        seen.add((job["id"], state))
                        detail = _detail(job, state)
                        print(f"  {stamp(t['start'])}  job {job['id'][:8]}  {state:11} {detail}")
                rollout = job.get("rollout") or {}
                for i, entry in enumerate(rollout.get("events") or rollout.get("timeline", [])):
                    if (job["id"], f"rollout-{i}") not in seen:
                        seen.add((job["id"], f"rollout-{i}"))
                        what = entry.get("reason") or entry.get("version") or ""
                        print(f"  {stamp(entry['time'])}     canary  {entry['event']:18} {what}")
            if jobs and all(j["state"] in TERMINAL for j in jobs):
                stop.set()
                return dict(jobs[-1])
            await asyncio.sleep(0.5)
    stop.set()
    return None


def _detail(job: dict[str, Any], state: str) -> str:
    if state == "queued":
        trigger = job["triggers"][0]
        return f"{trigger['type'].rsplit('.', 2)[-2]} event on version {trigger['version']}"
    if state == "training" and job["dataset"]:
        d = job["dataset"]
        return f"{d['labelled_rows']} of {d['logged_rows']} logged rows have labels"
    if state in ("registering", "rejected") and job.get("report"):
        return str(job["report"]["verdict"])
    if state == "canary":
        return f"version {job.get('candidate')} registered"
    return str(job.get("reason") or "")


async def main(args: argparse.Namespace) -> int:
    data = load_breast_cancer()
    x_all, y_all = data.data.astype(np.float32), data.target
    rng = np.random.default_rng(args.seed)
    calm_rows = rng.integers(0, len(x_all), args.calm)
    drift_rows = rng.integers(0, len(x_all), 4000)
    x_drift = x_all[drift_rows].copy()
    x_drift[:, [0, 2, 3, 20, 22, 23]] *= 1.6  # radius, perimeter, area: bigger tumours
    auth = {"authorization": f"Bearer {args.token}"}
    async with httpx.AsyncClient(base_url=args.gateway, timeout=30) as client:
        for url in (f"{args.gateway}/v2/health/ready", f"{args.worker}/health"):
            try:
                (await client.get(url)).raise_for_status()
            except httpx.HTTPError as exc:
                print(f"drift_demo: {url} does not answer ({exc}); is `make serve` running?")
                return 2
        started = time.time()
        route = await client.patch(
            f"/admin/routes/{MODEL}", json={"weights": {"champion": 100, "challenger": 0}},
            headers=auth,
        )  # fmt: skip
        if route.status_code != 200:
            print(f"drift_demo: routing to the champion failed: {route.text}")
            return 2
        print(f"all of {MODEL}'s traffic to its champion; {args.calm} calm requests ...")
        calm = Traffic(client, x_all[calm_rows], y_all[calm_rows], "calm")
        await calm.run(args.calm)
        onset = time.time()
        print(f"  {stamp(onset)}  drift starts: bigger tumours, with their labels")
        drift = Traffic(client, x_drift, y_all[drift_rows], "drift")
        stop = asyncio.Event()
        sender = asyncio.create_task(drift.run(stop))
        job = await watch(args.worker, started, stop, args.timeout)
        await sender
    if job is None:
        print(f"drift_demo: no retraining job ended within {args.timeout:g} s")
        return 1
    async with httpx.AsyncClient(base_url=args.worker, timeout=10) as client:
        listed = (await client.get("/jobs")).json()["jobs"]
    jobs = [j for j in reversed(listed) if j["created"] >= started]
    print("\ntimeline (seconds after drift onset)")
    for one in jobs:
        first = one["triggers"][0]
        kind = first["type"].rsplit(".", 2)[-2]
        print(f"  job {one['id'][:8]} ({kind} event on version {first['version']}): "
              f"{one['state']} {one['reason']}")  # fmt: skip
        stages = [("webhook received", one["triggers"][0]["received"])]
        if "canary" in one["timings"]:
            stages.append(
                (f"version {one['candidate']} registered", one["timings"]["canary"]["start"])
            )
        if "promoted" in one["timings"]:
            stages.append(
                (f"version {one['candidate']} promoted", one["timings"]["promoted"]["start"])
            )
        for what, t in stages:
            print(f"    {what:28} {t - onset:7.1f}")
    print("\naccuracy on the drifted traffic each version served")
    for version in sorted({v for v, _, _ in drift.answers}, key=lambda v: (len(v), v)):
        value, n = drift.accuracy(version)
        print(f"  version {version}: {value:.3f} over {n} requests")
    if job.get("report"):
        metrics = job["report"]["metrics"]
        rows = job["report"]["holdout_rows"]
        print(f"  validation on the newest {rows} labelled rows: champion "
              f"{metrics['champion']['accuracy']:.3f}, candidate "
              f"{metrics['candidate']['accuracy']:.3f}")  # fmt: skip
    print(f"\nfailed requests: {calm.failed + drift.failed}; "
          f"retraining jobs since the drift: {len(jobs)}")  # fmt: skip
    return 0 if job["state"] in ("promoted", "registered") else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--worker", default="http://127.0.0.1:8091")
    parser.add_argument("--token", default="demo-admin-token", help="an admin token")
    parser.add_argument("--calm", type=int, default=1200, help="calm requests first")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--seed", type=int, default=0)
    sys.exit(asyncio.run(main(parser.parse_args())))
