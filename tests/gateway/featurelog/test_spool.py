from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.featurelog import adopt_spools
from gateway.featurelog.spool import Spool, SpoolWriteError
from tests._support import free_port


def records(start: int, count: int) -> list[tuple[bytes, bytes]]:
    return [(b"model", f"record-{i}".encode()) for i in range(start, start + count)]


def test_replay_in_order_across_segments_and_restarts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=200)
    assert spool.append(records(0, 30)) == 30
    assert spool.pending_records == 30
    assert len(list(tmp_path.glob("*.seg"))) > 1
    first = spool.read(10)
    assert [e.value for e in first] == [f"record-{i}".encode() for i in range(10)]
    spool.ack(first[-1], len(first))
    assert spool.pending_records == 20

    reopened = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=200)
    assert reopened.pending_records == 20
    rest = reopened.read(100)
    assert [e.value for e in rest] == [f"record-{i}".encode() for i in range(10, 30)]
    reopened.ack(rest[-1], len(rest))
    assert reopened.pending_records == 0
    assert reopened.pending_bytes == 0
    assert list(tmp_path.glob("*.seg")) == []
    assert reopened.append(records(30, 2)) == 2
    assert [e.value for e in reopened.read(5)] == [b"record-30", b"record-31"]


def test_bounded_in_bytes_refuses_the_overflow(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100)
    written = spool.append(records(0, 20))
    assert 0 < written < 20
    assert spool.pending_bytes <= 100
    assert spool.append(records(100, 1)) == 0
    entries = spool.read(100)
    spool.ack(entries[-1], len(entries))
    assert spool.append(records(200, 1)) == 1


def test_torn_tail_from_a_crash_is_cut(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000)
    spool.append(records(0, 3))
    segment = next(tmp_path.glob("*.seg"))
    with segment.open("ab") as fh:
        fh.write(b"\x05\x00\x00\x00\xff")  # half a header of a fourth record
    reopened = Spool(tmp_path, max_bytes=1_000_000)
    assert reopened.pending_records == 3
    assert [e.value for e in reopened.read(10)] == [b"record-0", b"record-1", b"record-2"]


def test_a_damaged_segment_is_cut_and_replay_goes_on_past_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=63)
    assert spool.append(records(0, 9)) == 9  # 3 records of 21 bytes a segment
    segments = sorted(tmp_path.glob("*.seg"))
    assert len(segments) == 3
    data = bytearray(segments[1].read_bytes())
    data[4:8] = (2**31).to_bytes(4, "little")  # the segment's first record: a length gone wrong
    segments[1].write_bytes(bytes(data))
    reopened = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=63)
    # before, replay stopped at the bad record for good (an empty read with records pending)
    replayed: list[bytes] = []
    for _ in range(10):
        entries = reopened.read(2)
        if not entries:
            break
        replayed += [e.value for e in entries]
        reopened.ack(entries[-1], len(entries))
    expected = [f"record-{i}".encode() for i in (0, 1, 2, 6, 7, 8)]
    assert replayed == expected
    assert reopened.pending_records == 0
    assert reopened.pending_bytes == 0


def test_a_write_the_disk_refuses_is_raised_and_leaves_the_counts_right(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000)
    assert spool.append(records(0, 2)) == 2
    entries = spool.read(10)
    spool.ack(entries[-1], len(entries))  # all acknowledged: the next append starts segment 1
    (tmp_path / "00000001.seg").symlink_to("/dev/full")  # a full disk
    with pytest.raises(SpoolWriteError) as refused:
        spool.append(records(2, 4))
    assert refused.value.written == 0
    # before, the refused records stayed counted in the spool's bytes: a spool that grew
    # "full" of nothing
    assert (spool.pending_records, spool.pending_bytes) == (0, 0)
    (tmp_path / "00000001.seg").unlink()
    assert spool.append(records(6, 1)) == 1
    entries = spool.read(10)
    assert [e.value for e in entries] == [b"record-6"]
    spool.ack(entries[-1], len(entries))
    assert (spool.pending_records, spool.pending_bytes) == (0, 0)


@pytest.mark.parametrize("group", ["feature_log", "feedback"])
def test_a_spool_dir_that_cannot_be_made_stops_the_start_naming_the_setting(
    tmp_path: Path, demo_registry: Path, group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the gateway started, failed in its lifespan with a traceback and exit status 3.
    (tmp_path / "a-file").write_text("")
    config = {
        "server": {"port": free_port()},
        "registry": {"root": str(demo_registry)},
        "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
        "feature_log": {"enabled": True, "bootstrap_servers": "127.0.0.1:1"},
        group: {"enabled": True, "spool_dir": str(tmp_path / "a-file" / "spool")},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["serve", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"gateway: {group}.spool_dir: cannot create ")
    assert "Traceback" not in error


def pending(directory: Path) -> list[bytes]:
    return [entry.value for entry in Spool(directory, 1 << 20).read(1000)]


def test_a_start_with_another_worker_count_replays_what_the_last_run_spooled(
    tmp_path: Path,
) -> None:
    # Each worker of `gateway serve --workers N` spools in worker-K, one process in the folder
    # itself. Before, a start with another count never looked where the last run spooled:
    # those records stayed on disk, never sent, never counted.
    Spool(tmp_path, 1 << 20).append(records(0, 3))  # one process
    Spool(tmp_path / "worker-0", 1 << 20).append(records(10, 2))
    Spool(tmp_path / "worker-1", 1 << 20).append(records(20, 2))
    Spool(tmp_path / "worker-2", 1 << 20).append(records(30, 2))
    adopt_spools(tmp_path, 1 << 20, workers=2)  # worker-2 and the folder's own: to worker-0
    assert pending(tmp_path / "worker-0") == [
        v for _, v in records(10, 2) + records(0, 3) + records(30, 2)
    ]
    assert pending(tmp_path / "worker-1") == [v for _, v in records(20, 2)]
    assert pending(tmp_path) == pending(tmp_path / "worker-2") == []
    adopt_spools(tmp_path, 1 << 20, workers=1)  # back to one process: everything in the folder
    assert sorted(pending(tmp_path)) == sorted(
        v for _, v in records(0, 3) + records(10, 2) + records(20, 2) + records(30, 2)
    )
    assert pending(tmp_path / "worker-0") == pending(tmp_path / "worker-1") == []


def test_moving_a_spool_stops_at_the_bound_and_leaves_the_rest_in_place(tmp_path: Path) -> None:
    Spool(tmp_path / "worker-1", 1 << 20).append(records(0, 10))
    frame = 8 + len(records(0, 1)[0][0]) + len(records(0, 1)[0][1])
    assert Spool(tmp_path, 4 * frame).adopt(tmp_path / "worker-1") == 4
    assert pending(tmp_path) == [v for _, v in records(0, 4)]
    assert pending(tmp_path / "worker-1") == [v for _, v in records(4, 6)]
