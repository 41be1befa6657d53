"""The Kafka side of the feature log: an aiokafka producer behind a small ``RecordSink`` API."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

__all__ = ["KafkaOptions", "KafkaSink", "RecordSink"]

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    """Where log records go. ``send`` returns how many leading records were delivered."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(self, records: list[tuple[bytes, bytes]]) -> int: ...


KafkaOptions = dict[str, Any]


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
        try:
            producer = await self._ensure_producer()
            futures = [
                await producer.send(self.topic, value=value, key=key) for key, value in records
            ]
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("feature log: send failed (%s)", exc)
            await self._close_producer()
            return 0
        delivered = 0
        try:
            async with asyncio.timeout(self._timeout_s + 5):
                for future in futures:
                    await future
                    delivered += 1
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("feature log: %d of %d records not acknowledged (%s)",
                        len(records) - delivered, len(records), exc)  # fmt: skip
            for future in futures[delivered:]:
                future.cancel()
            await self._close_producer()
        return delivered

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
