"""The Kafka side of the feature log: an aiokafka producer behind a small ``RecordSink`` API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import BrokerResponseError, KafkaError
from aiokafka.partitioner import DefaultPartitioner

__all__ = ["KafkaOptions", "KafkaSink", "RecordSink", "SendResult", "refusal_reason"]

log = logging.getLogger(__name__)

KafkaOptions = dict[str, Any]

_PARTITIONER = DefaultPartitioner()
# aiokafka compresses a batch when its sender takes it, on the event loop; a batch this large
# is built (compressed) on a worker thread first, so a large message never stalls serving.
_BUILD_OFF_LOOP_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class SendResult:
    """What became of records given to a sink: the first ``settled`` were acknowledged or
    refused for good (``refused``: record index -> reason); the others may be tried again."""

    settled: int
    refused: dict[int, str] = field(default_factory=dict)


class RecordSink(Protocol):
    """Where log records go."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(self, records: list[tuple[bytes, bytes]]) -> SendResult: ...


def refusal_reason(exc: BaseException) -> str | None:
    """Why the broker refused records for good (``message_too_large``...), or None when the
    failure is worth retrying (connection, timeout, leader moved)."""
    if isinstance(exc, BrokerResponseError) and not exc.retriable:
        return str(exc.message).lower()  # Kafka's name of the error code: MESSAGE_TOO_LARGE...
    return None


class KafkaSink:
    """Sends records to one topic, keyed (by model) so each model's records stay in order.

    ``options`` are passed to ``AIOKafkaProducer`` (acks, compression, linger, security...).
    The producer is started lazily and restarted after failures, so the gateway starts and
    serves while the broker is down.
    """

    def __init__(
        self,
        topic: str,
        options: KafkaOptions,
        timeout_s: float,
        producer_class: Callable[..., AIOKafkaProducer] = AIOKafkaProducer,
    ) -> None:
        self.topic = topic
        self._options = options
        self._timeout_s = timeout_s
        self._producer_class = producer_class
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

    async def send(self, records: list[tuple[bytes, bytes]]) -> SendResult:
        """Send; the result says how many leading records are settled (order per key kept).

        Records are packed into producer batches per partition (``create_batch``), which costs
        far less than a ``send`` call per record; the key picks the partition exactly as the
        Java client's and aiokafka's default partitioner do.
        """
        futures: list[asyncio.Future[object]] = []  # one per batch
        owner: list[int] = []  # record index -> its batch's future
        try:
            producer = await self._ensure_producer()
            try:
                partitions = sorted(await producer.partitions_for(self.topic))
            except BrokerResponseError as exc:
                # The cluster refuses the topic itself (TOPIC_AUTHORIZATION_FAILED: an ACL):
                # every record is refused for good, as a batch refused for that reason is.
                if (reason := refusal_reason(exc)) is None:
                    raise
                log.error("feature log: the broker refuses topic %s (%s)", self.topic, exc)
                return SendResult(len(records), dict.fromkeys(range(len(records)), reason))
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
            return SendResult(0)
        try:
            async with asyncio.timeout(self._timeout_s + 5):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError as exc:
            results = [exc] * len(futures)
        reasons = {
            i: refusal_reason(result)
            for i, result in enumerate(results)
            if isinstance(result, BaseException)
        }
        refused = {i: reason for i, reason in reasons.items() if reason is not None}
        failed = {i for i, reason in reasons.items() if reason is None}
        settled = next((i for i, batch in enumerate(owner) if batch in failed), len(records))
        by_record = {i: refused[b] for i, b in enumerate(owner[:settled]) if b in refused}
        result = SendResult(settled, by_record)
        if failed:
            log.warning("feature log: %d of %d records not acknowledged (%s)",
                        len(records) - settled, len(records), results[min(failed)])  # fmt: skip
            await self._close_producer()
        return result

    async def _flush(
        self, producer: AIOKafkaProducer, batch: Any, partition: int
    ) -> asyncio.Future[object]:
        batch.close()
        if batch.size() > _BUILD_OFF_LOOP_BYTES and hasattr(batch, "_build"):
            await asyncio.to_thread(batch._build)  # compress here, not in aiokafka's sender
        future: asyncio.Future[object] = await producer.send_batch(
            batch, self.topic, partition=partition
        )
        return future

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = self._producer_class(
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
