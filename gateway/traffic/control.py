"""The control topic: route changes travel on one Kafka partition that every replica reads from
its beginning, so all replicas apply the same changes in the same order, and a restarted
replica comes back with the latest routes.

Every message is signed: ``gwctl1 <HMAC-SHA256 hex> <JSON change>``, the MAC over the topic's
name and the JSON, keyed with ``control.signing_key``. A message without a valid signature (by
the key or one of ``control.previous_signing_keys``) is skipped and counted, so whoever can
write to the topic but lacks the key changes nothing. Replaying a genuine old message changes
nothing either: a change names the revision it was made from, and revisions only grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from monitors.broker import BrokerError, create_topics

__all__ = ["ControlChannel", "ControlSigner", "RouteChannel"]

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None]]
_MAGIC = b"gwctl1"


class ControlSigner:
    """Signs control messages with one key and accepts those of any of ``keys``."""

    def __init__(self, topic: str, key: bytes, previous: Sequence[bytes] = ()) -> None:
        self._topic = topic.encode()
        self._key = key
        self._keys = [key, *previous]

    def sign(self, change: dict[str, Any]) -> bytes:
        """The message for ``change``."""
        payload = orjson.dumps(change)
        return b" ".join((_MAGIC, self._mac(self._key, payload), payload))

    def open(self, message: bytes) -> tuple[dict[str, Any] | None, str]:
        """The change a message carries, or None and why it is refused: ``unsigned``,
        ``bad_signature`` or ``malformed``."""
        magic, _, rest = message.partition(b" ")
        if magic != _MAGIC:
            return None, "unsigned"
        mac, _, payload = rest.partition(b" ")
        if not any(hmac.compare_digest(mac, self._mac(key, payload)) for key in self._keys):
            return None, "bad_signature"
        try:
            change = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None, "malformed"
        if not isinstance(change, dict):
            return None, "malformed"
        return change, ""

    def _mac(self, key: bytes, payload: bytes) -> bytes:
        return hmac.new(key, self._topic + b"\n" + payload, hashlib.sha256).hexdigest().encode()


class RouteChannel(Protocol):
    """How route changes reach every replica: the control topic, or the worker processes'
    supervisor (``gateway.workers``)."""

    async def start(self, handler: Handler) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, event: dict[str, Any]) -> None: ...


class ControlChannel:
    """Publish route changes and apply every change on the topic, oldest first."""

    def __init__(
        self,
        topic: str,
        options: dict[str, Any],
        timeout_s: float,
        signer: ControlSigner,
        on_rejected: Callable[[str], None],
    ) -> None:
        self.topic = topic
        self._options = options
        self._timeout_s = timeout_s
        self._signer = signer
        self._on_rejected = on_rejected
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_offset = 0
        self._caught_up = asyncio.Event()

    async def start(self, handler: Handler) -> None:
        """Start following the topic; wait (up to the timeout) until its history is applied."""
        self._task = asyncio.create_task(self._follow(handler), name="control-topic")
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._caught_up.wait()
        except TimeoutError:
            log.error(
                "control topic %s unreadable for %.0f s; serving the file's routes until it is",
                self.topic, self._timeout_s,
            )  # fmt: skip

    async def stop(self) -> None:
        """Stop following and publishing; safe twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                async with asyncio.timeout(5):
                    await producer.stop()

    async def publish(self, event: dict[str, Any]) -> None:
        """Append a change to the topic (acknowledged by the broker before this returns);
        raises what aiokafka raises (KafkaError, OSError, TimeoutError) when it cannot."""
        if self._producer is None:
            producer = AIOKafkaProducer(
                acks="all", request_timeout_ms=int(self._timeout_s * 1000), **self._options
            )
            try:
                async with asyncio.timeout(self._timeout_s):
                    await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._producer.send_and_wait(
                    self.topic,
                    self._signer.sign(event),
                    key=str(event.get("endpoint", "")).encode(),
                )
        except BaseException:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await producer.stop()
            raise

    async def _follow(self, handler: Handler) -> None:
        delay = 0.2
        while True:
            try:
                await self._consume(handler)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, TimeoutError, BrokerError) as exc:
                log.warning("control topic %s: %s; reconnecting", self.topic, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _consume(self, handler: Handler) -> None:
        # one partition: one order of changes for every replica
        await create_topics(
            self._options["bootstrap_servers"],
            [self.topic],
            1,
            timeout_s=0.0,  # _follow retries with backoff
            client_options=self._options,
            request_timeout_s=self._timeout_s,
        )
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            request_timeout_ms=int(self._timeout_s * 1000),
            **self._options,
        )
        await consumer.start()
        try:
            partition = TopicPartition(self.topic, 0)
            consumer.assign([partition])
            consumer.seek(partition, self._next_offset)
            end = (await consumer.end_offsets([partition]))[partition]
            if end < self._next_offset:  # a new broker with an empty topic: start over
                self._next_offset = 0
                consumer.seek(partition, 0)
            if self._next_offset >= end:
                self._caught_up.set()
            while True:
                batches = await consumer.getmany(partition, timeout_ms=200, max_records=500)
                for message in batches.get(partition, []):
                    self._next_offset = message.offset + 1
                    if message.value is None:
                        continue
                    change, refused = self._signer.open(message.value)
                    if change is None:
                        log.warning("control topic: message at offset %d refused: %s",
                                    message.offset, refused)  # fmt: skip
                        self._on_rejected(refused)
                        continue
                    try:
                        await handler(change)
                    except Exception:
                        log.exception(
                            "control topic: change at offset %d not applied", message.offset
                        )
                if self._next_offset >= end:
                    self._caught_up.set()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
