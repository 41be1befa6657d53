"""The job store: received events and retraining jobs, durable in one sqlite file.

Each change is one transaction, so a worker killed at any point restarts from the last state it
recorded. One job per model runs at a time; a trigger for a model whose job is still queued joins
that job; one whose windows lie inside data a running or finished job already read, or that
concerns the version a running or successful job is replacing (the drift and the degradation
of one episode arrive apart) or a job rejected less than ``rejected_cooldown_s`` ago tried to
replace, is noted on that job ("covered") instead of starting another.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["ACTIVE", "STATES", "TERMINAL", "Job", "JobStore", "Received"]

STATES = (
    "queued",
    "assembling",
    "training",
    "validating",
    "rejected",
    "registering",
    "canary",
    "registered",
    "promoted",
    "rolled_back",
    "failed",
)
# registered: the end when the canary is off (canary.enabled false)
TERMINAL = frozenset(("rejected", "registered", "promoted", "rolled_back", "failed"))
ACTIVE = frozenset(STATES) - TERMINAL - {"queued"}
_REPLACING = ACTIVE | {"registered", "promoted"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, received REAL NOT NULL, job_id TEXT, outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_model ON jobs (model, state);
"""


@dataclass
class Job:
    """One retraining job: what triggered it, where it is, how long each state took, its
    outcome."""

    id: str
    seq: int
    model: str
    state: str
    created: float
    updated: float
    triggers: list[dict[str, Any]] = field(default_factory=list)
    covered: list[dict[str, Any]] = field(default_factory=list)
    # state -> {"start": time, "end": time} (end absent while in it)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    reason: str = ""
    dataset: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    champion: str | None = None
    candidate: str | None = None
    rollout: dict[str, Any] | None = None
    # when the job started reading the topics: data up to here is in its dataset
    data_until: float | None = None
    resumed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "state": self.state,
            "created": self.created,
            "updated": self.updated,
            "triggers": self.triggers,
            "covered": self.covered,
            "timings": self.timings,
            "reason": self.reason,
            "dataset": self.dataset,
            "report": self.report,
            "champion": self.champion,
            "candidate": self.candidate,
            "rollout": self.rollout,
            "data_until": self.data_until,
            "resumed": self.resumed,
        }

    @classmethod
    def _of(cls, row: sqlite3.Row) -> Job:
        doc = json.loads(row["doc"])
        return cls(
            id=row["id"],
            seq=row["seq"],
            model=row["model"],
            state=row["state"],
            created=row["created"],
            updated=row["updated"],
            **doc,
        )

    def _doc(self) -> str:
        doc = self.as_dict()
        for key in ("id", "model", "state", "created", "updated"):
            del doc[key]
        return json.dumps(doc)


@dataclass(frozen=True)
class Received:
    """What became of one received event."""

    outcome: Literal["queued", "coalesced", "covered", "duplicate", "ignored"]
    job_id: str | None


class JobStore:
    """Jobs and seen event ids in ``<state_dir>/jobs.sqlite``; safe from several threads."""

    def __init__(self, path: Path, rejected_cooldown_s: float = 0.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._rejected_cooldown_s = rejected_cooldown_s

    def close(self) -> None:
        self._db.close()

    def receive(self, event_id: str, model: str | None, trigger: dict[str, Any]) -> Received:
        """Record an event once (by its idempotency key) and attach it to a job: the model's
        queued job, a job whose data covers it, or a new queued job. ``model`` None: an event
        that starts nothing (recorded so a repeat is still a duplicate)."""
        now = time.time()
        with self._lock, self._transaction():
            seen = self._db.execute("SELECT job_id, outcome FROM events WHERE id = ?", (event_id,))
            if seen.fetchone() is not None:
                return Received("duplicate", None)
            if model is None:
                self._db.execute(
                    "INSERT INTO events VALUES (?, ?, NULL, 'ignored')", (event_id, now)
                )
                return Received("ignored", None)
            received = self._attach(model, trigger, now)
            self._db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?)",
                (event_id, now, received.job_id, received.outcome),
            )
            return received

    def _attach(self, model: str, trigger: dict[str, Any], now: float) -> Received:
        jobs = [
            Job._of(r)
            for r in self._db.execute(
                "SELECT * FROM jobs WHERE model = ? AND state != 'failed' ORDER BY seq DESC",
                (model,),
            )
        ]
        for job in jobs:
            if job.state == "queued":
                job.triggers.append(trigger)
                self._write(job, now)
                return Received("coalesced", job.id)
        window_end = trigger.get("window_end")
        for job in jobs:
            # a job that has not read yet will read past this event; one that has, up to
            # data_until; and an event about the version a job is replacing, or has replaced,
            # is the same story (drift and degradation of one episode arrive apart)
            reads_past = job.data_until is None and job.state in ACTIVE
            same_version = (
                trigger.get("version") is not None and trigger.get("version") == job.champion
            )
            replacing = same_version and (
                job.state in _REPLACING
                or (job.state == "rejected" and now - job.updated <= self._rejected_cooldown_s)
            )
            if (
                reads_past
                or replacing
                or (
                    window_end is not None
                    and job.data_until is not None
                    and window_end <= job.data_until
                )
            ):
                job.covered.append(trigger)
                self._write(job, now)
                return Received("covered", job.id)
        seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
        job = Job(uuid.uuid4().hex[:16], seq, model, "queued", now, now, triggers=[trigger])
        job.timings["queued"] = {"start": now}
        self._db.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.seq, job.model, job.state, job.created, job.updated, job._doc()),
        )
        return Received("queued", job.id)

    def transition(self, job_id: str, state: str, **changes: Any) -> Job:
        """Move a job to ``state`` (timings closed and opened) with other fields changed, in one
        transaction."""
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r}")
        now = time.time()
        with self._lock, self._transaction():
            job = self._get(job_id)
            if job.state != state:
                job.timings.setdefault(job.state, {"start": job.updated})["end"] = now
                job.timings[state] = {"start": now}
                if state in TERMINAL:
                    job.timings[state]["end"] = now
                job.state = state
            for key, value in changes.items():
                if not hasattr(job, key):
                    raise ValueError(f"a job has no field {key!r}")
                setattr(job, key, value)
            self._write(job, now)
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            try:
                return self._get(job_id)
            except KeyError:
                return None

    def jobs(self, model: str | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs first."""
        query = "SELECT * FROM jobs"
        args: tuple[str, ...] = ()
        if model is not None:
            query += " WHERE model = ?"
            args = (model,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq DESC LIMIT ?", (*args, limit))
            return [Job._of(r) for r in rows]

    def runnable(self, busy: set[str]) -> list[Job]:
        """Unfinished jobs, oldest first, of models not in ``busy``: at most one per model, the
        one already under way before a queued one."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state NOT IN "
                f"({', '.join(repr(s) for s in sorted(TERMINAL))}) ORDER BY (state = 'queued'), seq"
            )
            chosen: dict[str, Job] = {}
            for row in rows:
                job = Job._of(row)
                if job.model not in busy and job.model not in chosen:
                    chosen[job.model] = job
        return sorted(chosen.values(), key=lambda j: j.seq)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            return {state: n for state, n in rows}

    def _get(self, job_id: str) -> Job:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return Job._of(row)

    def _write(self, job: Job, now: float) -> None:
        job.updated = now
        self._db.execute(
            "UPDATE jobs SET state = ?, updated = ?, doc = ? WHERE id = ?",
            (job.state, job.updated, job._doc(), job.id),
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
