"""The changelog topic on a real broker: creation, writes, the latest record per key, chunks."""

from __future__ import annotations

import os

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client import CollectorRegistry, generate_latest

from monitors.broker import EmbeddedBroker, create_topics
from monitors.changelog import Changelog, ChangelogError, Latest
from monitors.metrics import MonitorMetrics
from monitors.settings import KafkaSettings
from monitors.snapshot_codec import assemble, decode, encode
from monitors.state import PartitionSnapshot

pytestmark = pytest.mark.e2e

LIMIT = 8192  # small, so that a few kB of state takes several chunks


def _settings(broker: EmbeddedBroker, **changelog: object) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        changelog={"max_message_bytes": LIMIT, **changelog},
    )


def _big(offset: int) -> PartitionSnapshot:
    return PartitionSnapshot(offset, pending={"e": os.urandom(12_000).hex()})


async def _topic(broker: EmbeddedBroker, topic: str) -> tuple[int, dict[str, str]]:
    """The topic's partition count and configuration."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
    finally:
        await admin.close()
    (resource,) = response.resources
    return len(description["partitions"]), {entry[0]: entry[1] for entry in resource[4]}


async def test_the_topic_is_created_compacted_with_the_logs_partitions(
    broker: EmbeddedBroker,
) -> None:
    await create_topics(broker.bootstrap_servers, ["inference-log"], partitions=3)
    metrics = MonitorMetrics(CollectorRegistry())
    refused = Changelog(_settings(broker, create=False), metrics)
    with pytest.raises(ChangelogError, match=r"kafka\.changelog\.create is false"):
        await refused.start()
    changelog = Changelog(_settings(broker), metrics)
    await changelog.start()
    await changelog.stop()
    await changelog.stop()  # twice is fine
    partitions, config = await _topic(broker, "drift-monitor-state-changelog")
    assert partitions == 3
    assert config.get("cleanup.policy") == "compact"
    again = Changelog(_settings(broker, create=False), metrics)  # it exists now
    await again.start()
    try:
        for partition in range(3):
            await again.write(partition, encode(partition, PartitionSnapshot(partition), LIMIT))
        assert {(await again.read(p)).head is not None for p in range(3)} == {True}
        assert (await again.read(3)).head is None  # a partition the log does not have yet
    finally:
        await again.stop()


async def test_the_latest_record_wins_and_superseded_chunks_are_deleted(
    broker: EmbeddedBroker,
) -> None:
    metrics = MonitorMetrics(CollectorRegistry())
    changelog = Changelog(_settings(broker, partitions=2), metrics)
    await changelog.start()
    try:
        first = encode(1, _big(100), LIMIT)
        assert len(first.chunks) >= 2
        at = await changelog.write(1, first)
        await changelog.write(3, encode(3, PartitionSnapshot(7), LIMIT))  # same partition: 3 % 2
        latest = await changelog.read(1)
        assert latest.offset == at
        assert _snapshot(latest).offset == 100
        second = encode(1, _big(200), LIMIT)
        await changelog.write(1, second)
        third_at = await changelog.write(1, encode(1, PartitionSnapshot(300), LIMIT))
        latest = await changelog.read(1)
        assert latest.offset == third_at
        assert _snapshot(latest).offset == 300
        assert latest.chunks == {}, "the chunks of both chunked snapshots were deleted"
        assert _snapshot(await changelog.read(3)).offset == 7
        text = _exposition(metrics)
        assert 'monitor_changelog_writes_total{layout="chunked"} 2.0' in text
        assert 'monitor_changelog_writes_total{layout="single"} 2.0' in text
    finally:
        await changelog.stop()


async def test_a_tombstone_means_no_state_and_orphaned_chunks_are_deleted(
    broker: EmbeddedBroker,
) -> None:
    changelog = Changelog(_settings(broker, partitions=1), MonitorMetrics(CollectorRegistry()))
    await changelog.start()
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        cut_short = encode(0, _big(50), LIMIT)  # its chunks written, its record never
        for record in cut_short.records[:-1]:
            await producer.send_and_wait(changelog.topic, record.value, key=record.key)
        await changelog.write(0, encode(0, PartitionSnapshot(60), LIMIT))
        assert set((await changelog.read(0)).chunks) == set(cut_short.chunks)
        assert (await changelog.read(0)).chunks == {}, "deleted by the read before"
        await producer.send_and_wait(changelog.topic, None, key=b"0")  # an operator's reset
        latest = await changelog.read(0)
        assert (latest.head, latest.offset) == (None, None)
    finally:
        await producer.stop()
        await changelog.stop()


def _snapshot(latest: Latest) -> PartitionSnapshot:
    assert latest.head is not None
    return decode(assemble(latest.head, latest.chunks))


def _exposition(metrics: MonitorMetrics) -> str:
    return generate_latest(metrics.registry).decode()


async def test_a_record_over_the_limit_is_refused_and_counted(broker: EmbeddedBroker) -> None:
    """The embedded broker has no size limit; the producer enforces the configured one."""
    metrics = MonitorMetrics(CollectorRegistry())
    changelog = Changelog(_settings(broker, partitions=1), metrics)
    await changelog.start()
    try:
        too_big = encode(0, _big(1), 10 * LIMIT)  # one record of about 12 kB
        assert len(too_big.records) == 1
        with pytest.raises(ChangelogError, match="not written"):
            await changelog.write(0, too_big)
        assert 'monitor_changelog_errors_total{operation="write"} 1.0' in _exposition(metrics)
        assert (await changelog.read(0)).head is None
    finally:
        await changelog.stop()
