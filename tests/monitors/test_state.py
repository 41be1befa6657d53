from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from monitors.state import CachedSnapshot, PartitionSnapshot, SnapshotCache, choose_source
from monitors.windows import Pane, Summary, Windows, WindowSpec
from tests.monitors._records import demo_profile, records, sample

PROFILE = demo_profile()


def _spans(closed: list[tuple[list[Pane], Summary]]) -> list[tuple[int, list[int]]]:
    return [(summary.rows, summary.bins["mean radius"].tolist()) for _, summary in closed]


def test_windows_restored_from_a_snapshot_continue_exactly() -> None:
    rng = np.random.default_rng(0)
    specs = [
        WindowSpec("count", 240, 240),
        WindowSpec("count", 400, 100),
        WindowSpec("time", 20.0, 10.0, lateness_s=5.0),
    ]
    batch = records(sample(rng, 1000), start_time=0.0, step_s=0.1)
    for spec in specs:
        whole = Windows(spec, PROFILE).add(batch, list(range(1000)))
        first = Windows(spec, PROFILE)
        before = first.add(batch[:537], list(range(537)))
        state = orjson.loads(orjson.dumps(first.to_state()))  # through JSON, as on disk
        after = Windows.restore(spec, PROFILE, state).add(batch[537:], list(range(537, 1000)))
        assert _spans(before + after) == _spans(whole), spec


def test_a_snapshot_for_another_window_spec_is_refused() -> None:
    state = Windows(WindowSpec("count", 240, 240), PROFILE).to_state()
    with pytest.raises(ValueError, match="window state"):
        Windows.restore(WindowSpec("count", 500, 500), PROFILE, state)


def test_the_cache_is_used_only_when_it_holds_the_changelogs_latest_record(
    tmp_path: Path,
) -> None:
    cache = SnapshotCache(tmp_path, "log")
    cache.save(0, CachedSnapshot(7, PartitionSnapshot(250, evaluated={"m/1": 5})))
    cached = SnapshotCache(tmp_path, "log").load(0)  # another process, same directory
    assert cached is not None
    assert (cached.changelog_offset, cached.snapshot.offset) == (7, 250)
    assert cached.snapshot.evaluated == {"m/1": 5}
    assert choose_source(7, cached) == "cache"
    # Another instance owned the partition since and wrote a later snapshot.
    assert choose_source(12, cached) == "changelog"
    assert choose_source(12, None) == "changelog"
    # No record, or a tombstone: start afresh, whatever the cache holds.
    assert choose_source(None, cached) == "empty"
    assert choose_source(None, None) == "empty"


def test_a_missing_or_unreadable_cache_is_none_and_drop_removes_it(tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path, "log")
    assert cache.load(3) is None
    cache.save(3, CachedSnapshot(1, PartitionSnapshot(10)))
    (path,) = tmp_path.glob("log-3.*")
    assert not list(tmp_path.glob("*.tmp*")), "no temporary file left behind"
    path.write_bytes(b"{not json")
    assert cache.load(3) is None
    cache.drop(3)
    assert not path.exists()
    cache.drop(3)  # twice is fine
