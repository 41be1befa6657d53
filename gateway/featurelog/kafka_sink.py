"""The Kafka side of the feature log: an aiokafka producer behind a small ``RecordSink`` API."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

__all__ = ["KafkaOptions", "KafkaSink", "RecordSink"]

log = logging.getLogger(__name__)

KafkaOptions = dict[str, Any]

_PARTITIONER = DefaultPartitioner()


class RecordSink(Protocol):
    """Where log records go. ``send`` returns how many leading records were delivered."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(self, records: list[tuple[bytes, bytes]]) -> int: ...


class KafkaSink:
    """Sends records to one topic, keyed (by model) so each model's records stay in order.

    ``options`` are passed to ``AIOKafkaProducer`` (acks, compression, linger, security...).
    The producer is started lazily and restarted after failures, so the gateway starts and
    serves while the broker is down.
    """

    def __init__(self, topic: str, options: KafkaOptions, timeout_s: float) -> None:
        self.topic = topic
        self._options = options
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        try:
            await self._ensure_producer()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning(
                "feature log: broker not reachable at start (%s); spooling until it is", exc
            )

    async def stop(self) -> None:
        await self._close_producer()

    async def send(self, records: list[tuple[bytes, bytes]]) -> int:
        """Send; returns how many leading records the broker acknowledged (order per key kept).

        Records are packed into producer batches per partition (``create_batch``), which costs
        far less than a ``send`` call per record; the key picks the partition exactly as the
        Java client's and aiokafka's default partitioner do.
        """
        futures: list[asyncio.Future[object]] = []  # one per batch
        owner: list[int] = []  # record index -> its batch's future
        try:
            producer = await self._ensure_producer()
            partitions = sorted(await producer.partitions_for(self.topic))
            by_partition: dict[int, list[int]] = {}
            for index, (key, _) in enumerate(records):
                by_partition.setdefault(_PARTITIONER(key, partitions, partitions), []).append(index)
            owner = [0] * len(records)
            for partition, indexes in by_partition.items():
                batch = producer.create_batch()
                for index in indexes:
                    key, value = records[index]
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        futures.append(await self._flush(producer, batch, partition))
                        batch = producer.create_batch()
                        if batch.append(key=key, value=value, timestamp=None) is None:
                            raise ValueError(f"a record of {len(value)} bytes exceeds a batch")
                    owner[index] = len(futures)
                futures.append(await self._flush(producer, batch, partition))
        except (KafkaError, OSError, TimeoutError, ValueError) as exc:
            log.warning("feature log: send failed (%s)", exc)
            for future in futures:
                future.cancel()
            await self._close_producer()
            return 0
        try:
            async with asyncio.timeout(self._timeout_s + 5):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError as exc:
            results = [exc] * len(futures)
        failed = {i for i, result in enumerate(results) if isinstance(result, BaseException)}
        if not failed:
            return len(records)
        delivered = next(i for i, batch in enumerate(owner) if batch in failed)
        log.warning("feature log: %d of %d records not acknowledged (%s)",
                    len(records) - delivered, len(records), results[min(failed)])  # fmt: skip
        await self._close_producer()
        return delivered

    async def _flush(
        self, producer: AIOKafkaProducer, batch: Any, partition: int
    ) -> asyncio.Future[object]:
        batch.close()
        future: asyncio.Future[object] = await producer.send_batch(
            batch, self.topic, partition=partition
        )
        return future

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                request_timeout_ms=int(self._timeout_s * 1000), **self._options
            )
            try:
                async with asyncio.timeout(self._timeout_s):
                    await producer.start()
            except BaseException:
                await _stop_quietly(producer)
                raise
            self._producer = producer
        return self._producer

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        async with asyncio.timeout(5):
            await producer.stop()
    except (KafkaError, OSError, TimeoutError) as exc:
        log.debug("feature log: producer stop: %s", exc)
