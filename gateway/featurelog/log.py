"""The feature log: every request's record goes to Kafka without ever blocking serving.

Requests put records on a bounded in-memory queue and return at once. One background task
takes batches off the queue and sends them; when the broker is unreachable or slow, records go
to the disk spool instead, and a second task replays the spool in order once the broker is
back. Every record ends up counted as produced, spooled-then-replayed, or dropped by policy
with a reason (queue full, spool full, sampled out).

Order per model is kept: once anything is spooled, every newer record is spooled behind it
until the replay has emptied the spool; the switch back to direct sending happens under the
same lock as the decision to spool.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable

from gateway.featurelog.kafka_sink import RecordSink
from gateway.featurelog.spool import Spool
from gateway.metrics import FeatureLogMetrics
from gateway.serving import wait_woken
from monitors.schema import InferenceRecord, encode_records, message_records

__all__ = ["FeatureLog", "Message", "pack_messages"]

log = logging.getLogger(__name__)

# (key, value, records in it): one Kafka message holds a model's records, as columns, so the
# per-message costs of the producer, the broker and the consumer are shared by many records.
Message = tuple[bytes, bytes, int]
_RECORDS_PER_MESSAGE = 100


def pack_messages(records: Iterable[tuple[bytes, InferenceRecord]]) -> list[Message]:
    """Kafka messages of (key, record) pairs: per key (the model), in order, up to 100 records
    a message, encoded by ``monitors.schema.encode_records``."""
    groups: dict[bytes, list[InferenceRecord]] = {}
    for key, record in records:
        groups.setdefault(key, []).append(record)
    messages: list[Message] = []
    for key, group in groups.items():
        for start in range(0, len(group), _RECORDS_PER_MESSAGE):
            chunk = group[start : start + _RECORDS_PER_MESSAGE]
            messages.append((key, encode_records(chunk), len(chunk)))
    return messages


class FeatureLog:
    """Bounded queue -> Kafka, with a disk spool for outages. Use as an async context manager."""

    def __init__(
        self,
        sink: RecordSink,
        spool: Spool,
        metrics: FeatureLogMetrics,
        *,
        queue_size: int,
        batch_size: int,
        linger_s: float,
        shutdown_timeout_s: float = 10.0,
        replay_backoff_s: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        self._sink = sink
        self._spool = spool
        self._metrics = metrics
        self._queue: deque[tuple[bytes, InferenceRecord]] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._backoff = replay_backoff_s
        self._wake = asyncio.Event()
        self._spooled = asyncio.Event()
        self._order = asyncio.Lock()
        self._healthy = spool.pending_records == 0
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        if spool.pending_records:
            log.info(
                "feature log: %d records in the spool from before; replaying", spool.pending_records
            )
            self._spooled.set()
        self._update_gauges()

    async def __aenter__(self) -> FeatureLog:
        await self._sink.start()
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="feature-log:send"),
            asyncio.create_task(self._replay_loop(), name="feature-log:replay"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def submit(self, key: bytes, record: InferenceRecord) -> None:
        """Queue one record; never blocks. A full queue drops it and counts the drop."""
        if self._closing:
            self._metrics.dropped("shutdown")
            return
        if len(self._queue) >= self._queue_size:
            self._metrics.dropped("queue_full")
            return
        self._queue.append((key, record))
        if len(self._queue) == 1 or len(self._queue) >= self._batch_size:
            self._wake.set()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def stop(self) -> None:
        """Flush the queue to Kafka or the spool (within the shutdown timeout); safe twice."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        sender, replayer = self._tasks or (None, None)
        if sender is not None:
            done, _ = await asyncio.wait({sender}, timeout=self._shutdown_timeout_s)
            if not done:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        if replayer is not None:
            replayer.cancel()
            await asyncio.gather(replayer, return_exceptions=True)
        if self._queue:  # the sender was stuck: nothing accepted is lost, it goes to disk
            await self._to_spool(self._take(len(self._queue)))
        await self._sink.stop()
        self._update_gauges()

    # -- the sender ---------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._queue) < self._batch_size and not self._closing:
                close_at = loop.time() + self._linger_s
                while len(self._queue) < self._batch_size and not self._closing:
                    if not await wait_woken(self._wake, close_at - loop.time()):
                        break
            batch = self._take(self._batch_size)
            async with self._order:
                if not self._healthy:
                    await self._to_spool(batch)
                    continue
                delivered = await self._sink.send([(key, value) for key, value, _ in batch])
                self._metrics.produced(sum(count for _, _, count in batch[:delivered]))
                if delivered < len(batch):
                    self._healthy = False
                    await self._to_spool(batch[delivered:])
            self._update_gauges()

    def _take(self, count: int) -> list[Message]:
        """Up to ``count`` records off the queue, packed per model into Kafka messages."""
        queue = self._queue
        return pack_messages(queue.popleft() for _ in range(min(count, len(queue))))

    async def _to_spool(self, batch: list[Message]) -> None:
        written = await asyncio.to_thread(self._spool.append, [(k, v) for k, v, _ in batch])
        self._metrics.spooled(sum(count for _, _, count in batch[:written]))
        if written < len(batch):
            lost = sum(count for _, _, count in batch[written:])
            self._metrics.dropped("spool_full", lost)
            log.error("feature log: spool full, dropped %d records", lost)
        if written:
            self._spooled.set()
        self._update_gauges()

    # -- the replayer -------------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        delay = self._backoff[0]
        while True:
            if self._spool.pending_records == 0:
                async with self._order:
                    if self._spool.pending_records == 0:
                        if not self._healthy:
                            log.info("feature log: spool replayed, sending directly again")
                        self._healthy = True
                self._spooled.clear()
                await self._spooled.wait()
                continue
            entries = await asyncio.to_thread(self._spool.read, self._batch_size)
            delivered = await self._sink.send([(e.key, e.value) for e in entries])
            if delivered:
                await asyncio.to_thread(self._spool.ack, entries[delivered - 1], delivered)
                self._metrics.replayed(sum(message_records(e.value) for e in entries[:delivered]))
                self._update_gauges()
            if delivered < len(entries):
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])
            else:
                delay = self._backoff[0]

    def _update_gauges(self) -> None:
        self._metrics.depths(
            len(self._queue), self._spool.pending_records, self._spool.pending_bytes
        )
