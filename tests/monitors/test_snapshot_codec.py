"""Snapshots as changelog records: the round trip, and the message-size limit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from monitors.settings import SettingsError, load_settings
from monitors.snapshot_codec import (
    ChangelogRecord,
    SnapshotCodecError,
    assemble,
    chunk_keys,
    decode,
    encode,
)
from monitors.state import PartitionSnapshot
from monitors.windows import Windows, WindowSpec
from tests.monitors._records import demo_profile, records, sample

LIMIT = 1_000_000  # a production Kafka's message.max.bytes, about


def _sliding_snapshot() -> PartitionSnapshot:
    """Sliding time windows of 40 panes each for three model versions, half full."""
    rng = np.random.default_rng(1)
    profile = demo_profile()
    snapshot = PartitionSnapshot(123_456)
    for version in ("1", "2", "3"):
        windows = Windows(WindowSpec("time", 400.0, 10.0), profile)
        windows.add(records(sample(rng, 3000), step_s=0.1), list(range(3000)))
        key = f"breast_cancer/{version}"
        snapshot.windows[key] = windows.to_state()
        snapshot.sequence[key] = snapshot.evaluated[key] = 4
    snapshot.pending = {"evt-1": '{"type": "drift"}'}
    return snapshot


def test_a_snapshot_that_fits_is_one_record_and_decodes_to_itself() -> None:
    snapshot = _sliding_snapshot()
    encoded = encode(5, snapshot, LIMIT)
    (record,) = encoded.records
    assert record.key == b"5"
    assert record.header("offset") == b"123456"
    assert record.size() <= LIMIT
    assert encoded.bytes < encoded.raw_bytes / 3, "compressed"
    restored = decode(assemble(record, {}))
    assert restored.offset == 123_456
    assert restored.evaluated == snapshot.evaluated
    assert restored.pending == snapshot.pending
    spec = WindowSpec("time", 400.0, 10.0)
    state = restored.windows["breast_cancer/2"]
    assert Windows.restore(spec, demo_profile(), state).to_state() == state


def test_a_snapshot_over_the_limit_is_split_into_chunks_that_each_fit() -> None:
    # Hex of random bytes: 5 MB of undelivered event bodies, 2.5 MB compressed.
    pending = {f"evt-{i}": os.urandom(500_000).hex() for i in range(5)}
    snapshot = PartitionSnapshot(9, pending=pending)
    encoded = encode(2, snapshot, LIMIT)
    *chunks, head = encoded.records
    assert len(chunks) >= 3
    # as the producer measures a record against max_request_size (a batch of one record)
    assert max(r.size() for r in encoded.records) <= LIMIT
    assert head.key == b"2"
    assert head.value == b""
    assert chunk_keys(head) == [c.key for c in chunks] == encoded.chunks
    assert all(c.key.startswith(b"2/") for c in chunks)
    values = {c.key: c.value or b"" for c in chunks}
    assert decode(assemble(head, values)).pending == pending
    missing = dict(list(values.items())[1:])
    with pytest.raises(SnapshotCodecError, match="chunks missing"):
        assemble(head, missing)


def test_each_chunked_write_names_fresh_chunk_keys() -> None:
    snapshot = PartitionSnapshot(1, pending={"e": os.urandom(20_000).hex()})
    first, second = encode(0, snapshot, 8192), encode(0, snapshot, 8192)
    assert set(first.chunks).isdisjoint(second.chunks), "a cut-short write spoils no snapshot"


def test_a_limit_that_leaves_no_room_for_a_chunk_is_refused() -> None:
    snapshot = PartitionSnapshot(1, pending={"e": os.urandom(20_000).hex()})
    with pytest.raises(SnapshotCodecError, match="max_message_bytes 1100"):
        encode(0, snapshot, 1100)
    with pytest.raises(SettingsError, match=r"kafka\.changelog\.max_message_bytes"):
        load_settings(kafka={"changelog": {"max_message_bytes": 1000}})


def test_what_is_not_a_snapshot_is_a_clear_error() -> None:
    with pytest.raises(SnapshotCodecError, match="undecodable"):
        decode(b"not zlib")
    foreign = ChangelogRecord(b"0", b"x", (("codec", b"avro"),))
    with pytest.raises(SnapshotCodecError, match="unknown snapshot codec"):
        assemble(foreign, {})


def test_the_changelog_topic_is_named_after_the_group_unless_set() -> None:
    assert load_settings().kafka.changelog_topic == "drift-monitor-state-changelog"
    named = load_settings(kafka={"group_id": "g", "changelog": {"topic": "t"}})
    assert named.kafka.changelog_topic == "t"
    assert load_settings(kafka={"group_id": "g"}).kafka.changelog_topic == "g-state-changelog"
