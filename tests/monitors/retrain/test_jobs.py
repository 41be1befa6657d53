"""The job store: idempotency, coalescing, one job per model, durable across a reopen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from monitors.retrain.jobs import JobStore


def trigger(event_id: str, start: float = 100.0, end: float = 200.0) -> dict[str, Any]:
    return {"event_id": event_id, "type": "drift", "window_start": start, "window_end": end}


def test_a_repeated_event_is_a_duplicate_even_after_a_reopen(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    first = store.receive("e1", "m", trigger("e1"))
    assert first.outcome == "queued"
    assert store.receive("e1", "m", trigger("e1")).outcome == "duplicate"
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite")
    assert reopened.receive("e1", "m", trigger("e1")).outcome == "duplicate"
    assert [j.id for j in reopened.jobs()] == [first.job_id]


def test_triggers_coalesce_into_the_queued_job_and_models_are_apart(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    a = store.receive("e1", "m", trigger("e1"))
    b = store.receive("e2", "m", trigger("e2"))
    other = store.receive("e3", "n", trigger("e3"))
    assert (b.outcome, b.job_id) == ("coalesced", a.job_id)
    assert other.outcome == "queued"
    assert other.job_id != a.job_id
    job = store.get(a.job_id or "")
    assert job is not None
    assert [t["event_id"] for t in job.triggers] == ["e1", "e2"]
    assert store.receive("e4", None, trigger("e4")).outcome == "ignored"
    assert store.receive("e4", "m", trigger("e4")).outcome == "duplicate"


def test_one_runnable_job_per_model_the_one_under_way_first(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    first = store.receive("e1", "m", trigger("e1"))
    store.transition(first.job_id or "", "assembling", data_until=300.0)
    # a window inside the data the running job reads is covered by it
    covered = store.receive("e2", "m", trigger("e2", 150, 250))
    assert (covered.outcome, covered.job_id) == ("covered", first.job_id)
    later = store.receive("e3", "m", trigger("e3", 350, 400))
    assert later.outcome == "queued"
    assert [j.id for j in store.runnable(set())] == [first.job_id]
    assert store.runnable({"m"}) == []
    store.transition(first.job_id or "", "failed", reason="x")
    assert [j.id for j in store.runnable(set())] == [later.job_id]


def test_after_a_rejection_events_about_the_same_champion_wait_out_the_cooldown(
    tmp_path: Path,
) -> None:
    store = JobStore(tmp_path / "jobs.sqlite", rejected_cooldown_s=3600)
    first = store.receive("e1", "m", {**trigger("e1"), "version": "1"}).job_id or ""
    store.transition(first, "assembling", data_until=300.0, champion="1")
    store.transition(first, "rejected", reason="worse")
    late = store.receive("e2", "m", {**trigger("e2", 350, 400), "version": "1"})
    assert (late.outcome, late.job_id) == ("covered", first)
    other = store.receive("e3", "m", {**trigger("e3", 350, 400), "version": "2"})
    assert other.outcome == "queued", "another version is another story"
    store.transition(other.job_id or "", "failed", reason="x")
    no_cooldown = JobStore(tmp_path / "jobs.sqlite")
    assert no_cooldown.receive("e4", "m", {**trigger("e4", 350, 400), "version": "1"}).outcome == (
        "queued"
    )


def test_transitions_record_timings_and_reject_unknown_states(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = store.receive("e1", "m", trigger("e1")).job_id or ""
    store.transition(job_id, "assembling")
    job = store.transition(job_id, "training", dataset={"labelled_rows": 5})
    assert list(job.timings) == ["queued", "assembling", "training"]
    assert job.timings["assembling"]["end"] >= job.timings["assembling"]["start"]
    assert "end" not in job.timings["training"]
    assert job.dataset == {"labelled_rows": 5}
    with pytest.raises(ValueError, match="unknown job state"):
        store.transition(job_id, "dancing")
    with pytest.raises(ValueError, match="no field"):
        store.transition(job_id, "training", colour="red")
    done = store.transition(job_id, "failed", reason="stopped")
    assert done.timings["failed"]["end"] == done.timings["failed"]["start"]
    assert store.counts() == {"failed": 1}
