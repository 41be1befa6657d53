from __future__ import annotations

from pathlib import Path

from gateway.featurelog.spool import Spool


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
