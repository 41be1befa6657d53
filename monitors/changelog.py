"""The changelog topic: each input partition's latest snapshot, in a compacted Kafka topic, as
Kafka Streams keeps a state store's changelog.

Input partition ``p`` is written to changelog partition ``p mod n`` under key ``"p"`` (see
``monitors/snapshot_codec.py`` for chunked snapshots). A write returns once the broker has
acknowledged every record (``acks=all``), so the service commits an input offset only behind a
snapshot that survives the instance. Taking a partition on reads the changelog partition from
its beginning to its end: the latest record of the key wins; a tombstone or no record means the
partition starts with empty windows. Compaction keeps the topic to about one record per key on a
real cluster; a broker that does not compact only makes the read longer, never different.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from monitors.snapshot_codec import ChangelogRecord, EncodedSnapshot, chunk_keys, partition_key

if TYPE_CHECKING:
    from monitors.metrics import MonitorMetrics
    from monitors.settings import KafkaSettings

__all__ = ["Changelog", "ChangelogError", "Latest"]

log = logging.getLogger(__name__)


class ChangelogError(RuntimeError):
    """The changelog topic cannot be created, written or read."""


@dataclass
class Latest:
    """What the changelog holds for a partition: its latest record (None: none, or a
    tombstone), that record's offset, and the chunks seen with their offsets."""

    head: ChangelogRecord | None
    offset: int | None
    chunks: dict[bytes, bytes] = field(default_factory=dict)
    chunk_offsets: dict[bytes, int] = field(default_factory=dict)

    def orphans(self) -> list[bytes]:
        """Chunks written before the latest record and not named by it: a write cut short.
        (Later ones may belong to a write still in progress elsewhere.)"""
        if self.head is None or self.offset is None:
            return []
        named = set(chunk_keys(self.head))
        return [k for k, at in self.chunk_offsets.items() if at < self.offset and k not in named]


class Changelog:
    """The producer and the reader of the changelog topic; ``start`` creates the topic."""

    def __init__(self, kafka: KafkaSettings, metrics: MonitorMetrics) -> None:
        self._kafka = kafka
        self._settings = kafka.changelog
        self.topic = kafka.changelog_topic
        self._metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._partitions = 1
        self._read_lock = asyncio.Lock()
        self._chunks: dict[int, list[bytes]] = {}  # chunk keys of each partition's last snapshot

    async def start(self) -> None:
        """Create the topic when it is missing (if allowed), then start the clients."""
        security = self._kafka.security_options()
        self._partitions = await self._ensure_topic(security)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._kafka.bootstrap_servers,
            acks="all",
            enable_idempotence=False,  # Tansu refuses it; one batch in flight per partition
            max_request_size=self._settings.max_message_bytes,
            request_timeout_ms=int(self._settings.timeout_s * 1000),
            **security,
        )
        self._reader = AIOKafkaConsumer(
            bootstrap_servers=self._kafka.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=max(52_428_800, 4 * self._settings.max_message_bytes),
            max_partition_fetch_bytes=max(1_048_576, 2 * self._settings.max_message_bytes),
            **security,
        )
        try:
            await self._producer.start()
            await self._reader.start()
        except KafkaError as exc:
            await self.stop()
            raise ChangelogError(f"cannot reach the changelog topic {self.topic}: {exc}") from exc

    async def stop(self) -> None:
        """Stop both clients; safe to call twice."""
        producer, self._producer = self._producer, None
        reader, self._reader = self._reader, None
        if producer is not None:
            await producer.stop()
        if reader is not None:
            await reader.stop()

    async def _ensure_topic(self, security: dict[str, Any]) -> int:
        """The changelog's partition count, after creating the topic if it is missing."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self._kafka.bootstrap_servers, **security)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [t for t in (self.topic, self._kafka.topic) if t in existing]
            topics = {t["topic"]: t for t in await admin.describe_topics(wanted)} if wanted else {}
            if self.topic in topics:
                return max(1, len(topics[self.topic]["partitions"]))
            if not self._settings.create:
                raise ChangelogError(
                    f"changelog topic {self.topic} does not exist and kafka.changelog.create is "
                    "false: create it (cleanup.policy=compact) or allow the monitor to"
                )
            source = topics.get(self._kafka.topic)
            partitions = self._settings.partitions or (
                len(source["partitions"]) if source and source["partitions"] else 1
            )
            topic = NewTopic(
                self.topic,
                num_partitions=partitions,
                replication_factor=self._settings.replication_factor,
                topic_configs={"cleanup.policy": "compact"},
            )
            try:
                response = await admin.create_topics([topic])
            except TopicAlreadyExistsError:  # another instance was quicker
                return partitions
            for entry in response.topic_errors:  # (name, error code[, message])
                error = for_code(entry[1])
                if entry[1] not in (0, TopicAlreadyExistsError.errno):
                    detail = entry[2] if len(entry) > 2 and entry[2] else error.__name__
                    raise ChangelogError(
                        f"cannot create the changelog topic {self.topic} (replication factor "
                        f"{self._settings.replication_factor}, kafka.changelog."
                        f"replication_factor): {detail}"
                    )
            log.info("created the changelog topic %s (%d partitions)", self.topic, partitions)
            return partitions
        except KafkaError as exc:
            raise ChangelogError(f"cannot create the changelog topic {self.topic}: {exc}") from exc
        finally:
            await admin.close()

    def _partition(self, partition: int) -> int:
        return partition % self._partitions

    async def write(self, partition: int, encoded: EncodedSnapshot) -> int:
        """Write a snapshot's records in order and wait for the broker to acknowledge them;
        the offset of the partition's record. Then delete the chunks it supersedes."""
        producer = self._producer
        if producer is None:
            raise ChangelogError("the changelog is not started")
        target = self._partition(partition)
        try:
            chunks = [
                await producer.send(
                    self.topic, r.value, key=r.key, partition=target, headers=list(r.headers)
                )
                for r in encoded.records[:-1]
            ]
            await asyncio.gather(*chunks)  # every chunk is in before the record naming them
            head = encoded.records[-1]
            meta = await producer.send_and_wait(
                self.topic, head.value, key=head.key, partition=target, headers=list(head.headers)
            )
            stale = [k for k in self._chunks.get(partition, []) if k not in encoded.chunks]
            await self._delete(target, stale)
        except KafkaError as exc:
            self._metrics.changelog_errors.labels("write").inc()
            raise ChangelogError(f"snapshot of partition {partition} not written: {exc}") from exc
        self._chunks[partition] = list(encoded.chunks)
        self._metrics.changelog_writes.labels("chunked" if encoded.chunks else "single").inc()
        self._metrics.changelog_bytes.inc(encoded.bytes)
        self._metrics.snapshot_bytes.labels(str(partition)).set(encoded.bytes)
        return int(meta.offset)

    async def _delete(self, target: int, keys: list[bytes]) -> None:
        """Tombstones for chunk keys no snapshot names any more (compaction then drops them)."""
        producer = self._producer
        if not keys or producer is None:
            return
        sent = [await producer.send(self.topic, None, key=k, partition=target) for k in keys]
        await asyncio.gather(*sent)

    async def read(self, partition: int) -> Latest:
        """The changelog's latest record for a partition, read from the beginning to the end the
        topic had when the read began; orphaned chunks (a write cut short) are deleted."""
        reader = self._reader
        if reader is None:
            raise ChangelogError("the changelog is not started")
        key = partition_key(partition)
        prefix = key + b"/"
        target = self._partition(partition)
        tp = TopicPartition(self.topic, target)
        latest = Latest(None, None)
        deadline = time.monotonic() + self._settings.timeout_s
        async with self._read_lock:
            try:
                reader.assign([tp])
                end = (await reader.end_offsets([tp]))[tp]
                await reader.seek_to_beginning(tp)
                # Tansu answers ListOffsets with the last batch's first offset + 1, the fetch
                # response's high watermark is right: the end is the larger of the first two.
                first_fetch = True
                while await reader.position(tp) < end or first_fetch:
                    if time.monotonic() > deadline:
                        raise ChangelogError(
                            f"changelog partition {target} not read to offset {end} within "
                            f"{self._settings.timeout_s} s"
                        )
                    batch = await reader.getmany(tp, timeout_ms=500)
                    highwater = reader.highwater(tp)
                    if first_fetch and highwater is not None:
                        end, first_fetch = max(end, highwater), False
                    if first_fetch and end == 0:
                        break  # an empty partition: no fetch response names a high watermark
                    for message in batch.get(tp, []):
                        if message.offset >= end:
                            break
                        _note(latest, key, prefix, message)
            except KafkaError as exc:
                self._metrics.changelog_errors.labels("read").inc()
                raise ChangelogError(f"changelog partition {target} not read: {exc}") from exc
            finally:
                reader.unsubscribe()
        named = chunk_keys(latest.head) if latest.head is not None else []
        orphans = latest.orphans()
        if orphans:
            log.info("partition %d: deleting %d orphaned snapshot chunks", partition, len(orphans))
            try:
                await self._delete(target, orphans)
            except KafkaError as exc:  # harmless: they are deleted at the next restore
                log.warning("orphaned snapshot chunks not deleted: %s", exc)
        self._chunks[partition] = named
        return latest

    def forget(self, partition: int) -> None:
        """A revoked partition's chunks are its next owner's to delete."""
        self._chunks.pop(partition, None)


def _note(latest: Latest, key: bytes, prefix: bytes, message: Any) -> None:
    """Take one changelog message into what is known of a partition."""
    if message.key == key:
        if message.value is None:
            latest.head, latest.offset = None, None
        else:
            headers = tuple((str(k), bytes(v)) for k, v in message.headers or ())
            latest.head = ChangelogRecord(key, message.value, headers)
            latest.offset = int(message.offset)
    elif message.key is not None and message.key.startswith(prefix):
        if message.value is None:
            latest.chunks.pop(message.key, None)
            latest.chunk_offsets.pop(message.key, None)
        else:
            latest.chunks[message.key] = message.value
            latest.chunk_offsets[message.key] = int(message.offset)
