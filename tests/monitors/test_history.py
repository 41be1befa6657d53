"""Every evaluated window kept and served: a monitor that catches up on a backlog evaluates
several windows in one batch, all of them land in the history, on /windows and in the
metrics, and the one webhook event names every window of the drift episode."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
from prometheus_client import CollectorRegistry

from monitors.app import create_status_app
from monitors.history import WindowHistory
from monitors.metrics import MonitorMetrics
from monitors.profile import build_profile
from monitors.service import MonitorService
from monitors.settings import MonitorSettings
from tests.monitors._records import NAMES, X, backlog, consumer_records, demo_profile

MODEL = "breast_cancer"


def service(registry: Path, tmp_path: Path) -> MonitorService:
    """A monitor of the demo model's version 1, whose profile holds its predicted label too."""
    demo_profile().dump(registry / MODEL / "1")
    settings = MonitorSettings(
        registry_root=registry,
        state_dir=tmp_path / "state",
        window={"by": "count", "size": 500, "slide": 500},
        decision={"consecutive": 2, "cooldown_windows": 5},
        webhooks=[{"name": "hook", "url": "http://127.0.0.1:9/none", "secret": "s"}],
    )
    return MonitorService(settings, MonitorMetrics(CollectorRegistry()))


async def test_a_backlog_caught_up_in_one_batch_is_all_in_the_history_and_one_event(
    demo_registry: Path, tmp_path: Path
) -> None:
    monitor = service(demo_registry, tmp_path)
    await monitor.consume(0, consumer_records(backlog()))  # one poll: nine windows
    monitor._save_audit()
    await monitor.webhooks.aclose()

    entries = monitor.history.windows(MODEL, "1")
    assert [e["seq"] for e in entries] == list(range(1, 10))
    assert [e["status"] for e in entries] == ["ok"] * 3 + ["drift"] * 6
    assert [e["window_id"] for e in entries] == [f"{MODEL}/1/p0/{n}" for n in range(1, 10)]
    assert all(e["rows"] == 500 for e in entries)
    feature = next(f for f in entries[5]["features"] if f["name"] == "mean area")
    for key in ("statistic", "p_value", "log10_p", "psi", "psi_threshold", "js_distance",
                "js_threshold", "wasserstein", "wasserstein_threshold", "flags", "drifted"):  # fmt: skip
        assert key in feature, key
    assert feature["drifted"] is True
    assert sum(feature["histogram"]) == 500
    reference = monitor.history.reference(MODEL, "1")
    assert reference is not None
    assert len(reference["features"]["mean area"]["counts"]) == len(feature["histogram"])

    (body,) = monitor.outbox.pending(0).values()
    data = orjson.loads(body)["data"]
    episode = [w["id"] for w in data["episode"]["windows"]]
    assert episode == [f"{MODEL}/1/p0/{n}" for n in range(4, 10)], "every window of the episode"
    assert data["window"]["id"] == f"{MODEL}/1/p0/5"  # the one that completed the episode
    assert {"mean radius", "mean perimeter", "mean area"} <= set(data["drifted_features"])

    metrics = (await _get(monitor, "/metrics")).text
    assert 'monitor_skipped_records_total{reason="invalid"} 1.0' in metrics
    assert 'monitor_skipped_records_total{reason="shadow"} 1.0' in metrics
    assert (
        'monitor_feature_drifted{feature="mean area",model="breast_cancer",version="1"} 1.0'
        in metrics
    )
    assert 'monitor_feature_neg_log10_p_value{feature="mean area"' in metrics
    assert 'monitor_feature_psi_threshold{feature="mean area"' in metrics


async def test_a_model_with_a_categorical_feature_has_its_windows_written(
    demo_registry: Path, tmp_path: Path
) -> None:
    # Before, the unseen-categories flag was numpy's bool, which the history's JSON writer
    # refused: the first save after a window of such a model raised, and the monitor stopped.
    monitor = service(demo_registry, tmp_path)
    columns = {name: X[:, j] for j, name in enumerate(NAMES)}
    columns["prediction:label"] = (X[:, 0] > 14).astype(int)
    profile = build_profile(columns, categorical={"prediction:label"})
    profile.dump(demo_registry / MODEL / "1")
    await monitor.consume(0, consumer_records(backlog()))
    monitor._save_audit()
    await monitor.webhooks.aclose()
    entries = monitor.history.windows(MODEL, "1")
    assert [e["status"] for e in entries] == ["ok"] * 3 + ["drift"] * 6
    label = next(f for f in entries[-1]["features"] if f["name"] == "prediction:label")
    assert label["kind"] == "categorical"
    assert label["flags"]["unseen"] is False
    assert label["drifted"] is True


async def test_windows_are_served_by_seq_and_limit(demo_registry: Path, tmp_path: Path) -> None:
    monitor = service(demo_registry, tmp_path)
    await monitor.consume(0, consumer_records(backlog()))
    monitor._save_audit()
    await monitor.webhooks.aclose()
    doc = (await _get(monitor, f"/windows/{MODEL}/1?limit=3")).json()
    assert [w["seq"] for w in doc["windows"]] == [7, 8, 9]
    assert "mean area" in doc["reference"]["features"]
    doc = (await _get(monitor, f"/windows/{MODEL}/1?since=7")).json()
    assert [w["seq"] for w in doc["windows"]] == [8, 9]
    assert (await _get(monitor, f"/windows/{MODEL}/1?limit=x")).status_code == 400
    # a digit to str.isdigit that int() refuses, and more digits than int() parses: 400, not 500
    for query in ("limit=%C2%B2", "since=" + "9" * 5000, "since=-1"):
        answer = await _get(monitor, f"/windows/{MODEL}/1?{query}")
        assert answer.status_code == 400, query
        assert answer.json()["error"].startswith(f"'{query.split('=')[0]}' must be"), query
    assert (await _get(monitor, f"/windows/{MODEL}/2")).status_code == 404
    assert (await _get(monitor, f"/windows/{'x' * 300}/1")).status_code == 404  # not a 500


def test_history_skips_windows_written_before_and_keeps_the_newest(tmp_path: Path) -> None:
    profile = demo_profile()
    history = WindowHistory(tmp_path, max_windows=5)
    for n in range(1, 21):
        history.add(0, {"model": "m", "version": "1", "window_id": f"m/1/p0/{n}"}, profile)
        if n % 3 == 0:
            history.flush()
    history.flush()
    assert [e["seq"] for e in history.windows("m", "1")] == [16, 17, 18, 19, 20]
    lines = (tmp_path / "m" / "1" / "windows.jsonl").read_text().splitlines()
    assert len(lines) <= 10
    again = WindowHistory(tmp_path, max_windows=5)  # a restarted monitor
    again.add(0, {"model": "m", "version": "1", "window_id": "m/1/p0/20"}, profile)  # re-read
    again.add(1, {"model": "m", "version": "1", "window_id": "m/1/p1/1"}, profile)
    again.add(2, {"model": "m", "version": "1", "window_id": "m/1/p2/1"}, profile)
    again.discard({2})  # revoked before it was written
    again.flush()
    assert [(e["seq"], e["window_id"]) for e in again.windows("m", "1", limit=2)] == [
        (20, "m/1/p0/20"),
        (21, "m/1/p1/1"),
    ]
    odd = WindowHistory(tmp_path)
    odd.add(0, {"model": "../x", "version": ".", "window_id": "w"}, profile)
    odd.flush()
    assert [e["window_id"] for e in odd.windows("../x", ".")] == ["w"]
    assert not (tmp_path.parent / "x").exists()
    # names the registry allows whose URL-encoded form is past a file name's 255 bytes: kept
    # apart (their folder names are shortened with a digest), not an OSError
    spaced, accented = "a " * 64, "é" * 127
    for name in (spaced, accented):
        odd.add(0, {"model": name, "version": "1", "window_id": name}, profile)
    odd.flush()
    assert [e["window_id"] for e in odd.windows(spaced, "1")] == [spaced]
    assert [e["window_id"] for e in odd.windows(accented, "1")] == [accented]
    assert odd.windows("b " * 200, "1") == []
    assert odd.reference("b " * 200, "1") is None


async def _get(monitor: MonitorService, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_status_app(monitor))
    async with httpx.AsyncClient(transport=transport, base_url="http://monitor") as client:
        return await client.get(path)


async def test_a_line_torn_by_a_crash_is_cut_off_and_the_monitor_goes_on(
    demo_registry: Path, tmp_path: Path
) -> None:
    # a crash mid-append left half a line: every GET /windows answered 500, and the restarted
    # monitor's first save raised on it (the history's and the audit trail's), so it never
    # got past its first batch again
    monitor = service(demo_registry, tmp_path)
    await monitor.consume(0, consumer_records(backlog()))
    monitor._save_audit()
    await monitor.webhooks.aclose()
    state = tmp_path / "state"
    files = [state / "history" / MODEL / "1" / "windows.jsonl", state / "windows.jsonl"]
    for path in files:
        with path.open("ab") as fh:
            fh.write(b'{"seq": 10, "window_id": "breast_cancer/1/p0/1')

    served = await _get(monitor, f"/windows/{MODEL}/1")
    assert served.status_code == 200
    assert [w["seq"] for w in served.json()["windows"]] == list(range(1, 10))

    restarted = service(demo_registry, tmp_path)
    await restarted.consume(1, consumer_records(backlog()))
    restarted._save_audit()
    await restarted.webhooks.aclose()
    for path in files:
        lines = path.read_bytes().splitlines()
        assert all(isinstance(orjson.loads(line), dict) for line in lines), path
    windows = restarted.history.windows(MODEL, "1")
    assert [w["seq"] for w in windows] == list(range(1, 19))
    assert windows[9]["window_id"] == f"{MODEL}/1/p1/1", "the first line after the torn one"
    audited = [orjson.loads(line)["window_id"] for line in files[1].read_bytes().splitlines()]
    assert len(audited) == 18
