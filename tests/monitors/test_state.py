from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from monitors.state import PartitionSnapshot, SnapshotStore
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


def test_the_snapshot_that_goes_with_the_committed_offset_is_chosen(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, "log")
    store.save(0, PartitionSnapshot(100, evaluated={"m/1": 3}))
    store.save(0, PartitionSnapshot(250, evaluated={"m/1": 5}))
    fresh = SnapshotStore(tmp_path, "log")  # another process
    current = fresh.load(0, committed=250)
    assert current is not None
    assert current.offset == 250
    # Crashed after writing 250 but before committing it: the batch is read again from 100,
    # and the windows it closes, evaluated before the crash, are not evaluated again.
    previous = fresh.load(0, committed=100)
    assert previous is not None
    assert previous.offset == 100
    assert previous.evaluated == {"m/1": 5}
    # Written by an owner that lost the partition since: not the state of this offset.
    assert fresh.load(0, committed=400) is None
    assert fresh.load(0, committed=None) is None
    assert fresh.load(1, committed=100) is None


def test_saving_rotates_current_into_previous(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, "log")
    for offset in (10, 20, 30):
        store.save(3, PartitionSnapshot(offset))
    doc = orjson.loads((tmp_path / "log-3.json").read_bytes())
    assert (doc["current"]["offset"], doc["previous"]["offset"]) == (30, 20)
    assert not list(tmp_path.glob("*.tmp*")), "no temporary file left behind"
