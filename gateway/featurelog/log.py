"""The feature log: every request's record goes to Kafka without ever blocking serving.

Requests put records on a bounded in-memory queue and return at once. One background task
takes batches off the queue and sends them; when the broker is unreachable or slow, records go
to the disk spool instead, and a second task replays the spool in order once the broker is
back. Every record ends up counted as produced, spooled-then-replayed, or dropped by policy
with a reason (queue full, spool full or not writable, sampled out). A disk that refuses the
spool, or a damaged spool, never stops either task: what cannot be written is dropped and
counted, and sending goes on.

Order per model is kept: once anything is spooled, every newer record is spooled behind it
until the replay has emptied the spool; the switch back to direct sending happens under the
same lock as the decision to spool.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, cast

from typing_extensions import TypeVar

from gateway.featurelog.dead_letter import DeadLetterFile
from gateway.featurelog.kafka_sink import RecordSink, SendResult
from gateway.featurelog.packing import Message, estimate_bytes, pack
from gateway.featurelog.spool import Spool, SpoolEntry, SpoolWriteError
from gateway.metrics import FeatureLogMetrics
from gateway.serving import wait_woken
from monitors.schema import InferenceRecord, message_records

__all__ = ["FeatureLog"]

log = logging.getLogger(__name__)

# A batch of about this much JSON or less is packed on the event loop (a millisecond or two); a
# larger one, whose size a client controls, on a worker thread.
_PACK_INLINE_BYTES = 1024 * 1024
_PACK_INLINE_ITEMS = 2000  # the same for records of another kind, counted
# A sender behind takes up to this many batches' worth of queued records in one round: a
# round's cost is mostly fixed (a pass to a worker thread, a produce request, its
# acknowledgement: several passes of a busy event loop), so rounds of ``batch_size`` fall
# behind a saturated server, and the backlog then fills the queue until records are dropped.
_MAX_BATCHES_A_ROUND = 20

# What a log carries: inference records by default; the feedback log carries feedback records.
RecordT = TypeVar("RecordT", default=InferenceRecord)
# Packs (key, record) pairs of another kind into messages under a size bound.
PackFn = Callable[[list[tuple[bytes, Any]], int], list[Message]]


class FeatureLog(Generic[RecordT]):
    """Bounded queue -> Kafka, with a disk spool for outages. Use as an async context manager.

    It carries inference records; a log of another record kind (the feedback log) passes
    ``pack`` (records to messages under the size bound) and ``count`` (records in a message).
    The queue is bounded in records (``queue_size``) and, for inference records, in their
    estimated encoded bytes (``queue_max_bytes``): a record of 100,000 rows weighs as much.
    """

    def __init__(
        self,
        sink: RecordSink,
        spool: Spool,
        metrics: FeatureLogMetrics,
        *,
        queue_size: int,
        queue_max_bytes: int = 512 * 1024 * 1024,
        batch_size: int,
        linger_s: float,
        max_message_bytes: int = 1_000_000,
        dead_letter: DeadLetterFile | None = None,
        shutdown_timeout_s: float = 10.0,
        replay_backoff_s: tuple[float, float] = (0.2, 5.0),
        pack: PackFn | None = None,
        count: Callable[[bytes], int] = message_records,
    ) -> None:
        self._pack_other = pack
        self._count = count
        self._sink = sink
        self._spool = spool
        self._metrics = metrics
        # (key, record, its estimated bytes: 0 for records of another kind)
        self._queue: deque[tuple[bytes, RecordT, int]] = deque()
        self._queue_size = queue_size
        self._queue_max_bytes = queue_max_bytes
        self._queue_bytes = 0
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._max_message_bytes = max_message_bytes
        self._dead_letter = dead_letter or DeadLetterFile(spool.directory, 64 * 1024 * 1024)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._backoff = replay_backoff_s
        self._wake = asyncio.Event()
        self._spooled = asyncio.Event()
        self._stopping = asyncio.Event()
        self._order = asyncio.Lock()
        self._healthy = spool.pending_records == 0
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._committing: asyncio.Task[None] | None = None
        # What the sender took off the queue and has not yet sent or spooled: a stop whose
        # deadline cuts the round spools it, so no accepted record is lost.
        self._taken: list[tuple[bytes, RecordT, int]] = []
        self._held: list[Message] = []
        if spool.pending_records:
            log.info(
                "feature log: %d records in the spool from before; replaying", spool.pending_records
            )
            self._spooled.set()
        self._update_gauges()

    async def __aenter__(self) -> FeatureLog[RecordT]:
        await self._sink.start()
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="feature-log:send"),
            asyncio.create_task(self._replay_loop(), name="feature-log:replay"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def submit(self, key: bytes, record: RecordT) -> None:
        """Queue one record; never blocks. A full queue (in records or in bytes) drops it and
        counts the drop; a record larger than the byte bound still goes into an empty queue."""
        if self._closing:
            self._metrics.dropped("shutdown")
            return
        size = 0 if self._pack_other is not None else estimate_bytes(cast(InferenceRecord, record))
        if len(self._queue) >= self._queue_size or (
            self._queue and self._queue_bytes + size > self._queue_max_bytes
        ):
            self._metrics.dropped("queue_full")
            return
        self._queue.append((key, record, size))
        self._queue_bytes += size
        if len(self._queue) == 1 or len(self._queue) >= self._batch_size:
            self._wake.set()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def stop(self) -> None:
        """Flush the queue to Kafka or the spool (within the shutdown timeout); safe twice.

        The replayer finishes the round it is in, so what the broker acknowledged is also
        acknowledged in the spool and counted, and is not sent again at the next start.
        """
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        self._spooled.set()
        self._stopping.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._shutdown_timeout_s
        for task in self._tasks:
            done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._committing is not None:  # an acknowledgement outlives a cancelled replayer
            await self._committing
        # The sender was stuck: nothing accepted is lost, it goes to disk, oldest first.
        held, self._held = self._held, []
        if self._taken:
            held += await self._pack(self._taken)
            self._taken = []
        if held:
            await self._to_spool(held)
        if self._queue:
            await self._to_spool(await self._pack(self._take(len(self._queue))))
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
            backlog = min(len(self._queue), self._batch_size * _MAX_BATCHES_A_ROUND)
            self._taken = self._take(max(self._batch_size, backlog))
            self._held = batch = await self._pack(self._taken)
            self._taken = []
            async with self._order:
                if not self._healthy:
                    self._held = []
                    await self._to_spool(batch)
                    continue
                result = await self._sink.send([(key, value) for key, value, _ in batch])
                # held until spooled: a stop may cut the round while refusals are written
                self._held = batch[result.settled :]
                delivered = await self._settle(batch, result)
                self._metrics.produced(delivered)
                if result.settled < len(batch):
                    self._healthy = False
                    self._held = []
                    await self._to_spool(batch[result.settled :])
            self._update_gauges()

    def _take(self, count: int) -> list[tuple[bytes, RecordT, int]]:
        """Up to ``count`` records off the queue, oldest first, with their estimated bytes."""
        queue = self._queue
        taken = [queue.popleft() for _ in range(min(count, len(queue)))]
        self._queue_bytes = self._queue_bytes - sum(size for _, _, size in taken) if queue else 0
        return taken

    async def _pack(self, taken: list[tuple[bytes, RecordT, int]]) -> list[Message]:
        """The records packed per model into messages under the size bound, large batches on a
        worker thread (encoding is CPU work whose size a client controls)."""
        items = [(key, record) for key, record, _ in taken]
        if self._pack_other is not None:
            if len(items) <= _PACK_INLINE_ITEMS:
                return self._pack_other(items, self._max_message_bytes)
            return await asyncio.to_thread(self._pack_other, items, self._max_message_bytes)
        records = cast(list[tuple[bytes, InferenceRecord]], items)
        sizes = [size for _, _, size in taken]
        if sum(sizes) <= _PACK_INLINE_BYTES:
            packed = pack(records, self._max_message_bytes, sizes)
        else:
            packed = await asyncio.to_thread(pack, records, self._max_message_bytes, sizes)
        if packed.split or packed.cut:
            self._metrics.oversized(packed.split, packed.cut)
        return packed.messages

    async def _settle(self, batch: list[Message], result: SendResult) -> int:
        """Dead-letter what the broker refused for good; returns the records it took."""
        for index, reason in sorted(result.refused.items()):
            key, value, count = batch[index]
            await asyncio.to_thread(self._refuse, key, value, count, reason)
        settled = enumerate(batch[: result.settled])
        return sum(count for i, (_, _, count) in settled if i not in result.refused)

    def _refuse(self, key: bytes, value: bytes, count: int, reason: str) -> None:
        try:
            kept = self._dead_letter.append(key, value, count, reason)
        except OSError as exc:
            self._metrics.dropped("dead_letter_error", count)
            log.error("feature log: broker refused %d records (%s), cannot write %s: %s",
                      count, reason, self._dead_letter.path, exc)  # fmt: skip
            return
        if kept:
            self._metrics.dead_lettered(reason, count)
            log.error("feature log: broker refused %d records (%s): kept in %s",
                      count, reason, self._dead_letter.path)  # fmt: skip
        else:
            self._metrics.dropped("dead_letter_full", count)
            log.error("feature log: broker refused %d records (%s), dead-letter file full",
                      count, reason)  # fmt: skip

    async def _to_spool(self, batch: list[Message]) -> None:
        reason = "spool_full"
        try:
            written = await asyncio.to_thread(self._spool.append, [(k, v) for k, v, _ in batch])
        except SpoolWriteError as exc:  # disk full, folder not writable: the log goes on
            written, reason = exc.written, "spool_error"
            log.error("feature log: cannot write the spool in %s: %s", self._spool.directory, exc)
        self._metrics.spooled(sum(count for _, _, count in batch[:written]))
        if written < len(batch):
            lost = sum(count for _, _, count in batch[written:])
            self._metrics.dropped(reason, lost)
            log.error("feature log: %s, dropped %d records", reason.replace("_", " "), lost)
        # Wake the replayer even when nothing was written: it is the one that says the log is
        # healthy again once the spool is empty, also when the spool could take nothing.
        self._spooled.set()
        self._update_gauges()

    # -- the replayer -------------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        delay = self._backoff[0]
        while not self._closing:
            if self._spool.pending_records == 0:
                # Cleared before the check under the lock: the sender may be spooling while
                # the replayer waits for the lock, and its wake-up must not be lost.
                self._spooled.clear()
                async with self._order:
                    if self._spool.pending_records == 0:
                        if not self._healthy:
                            log.info("feature log: spool replayed, sending directly again")
                        self._healthy = True
                if self._closing:
                    return
                await self._spooled.wait()
                continue
            try:
                entries = await asyncio.to_thread(self._spool.read, self._batch_size)
            except OSError as exc:  # a segment gone or unreadable: try again, never spin
                log.error("feature log: cannot read the spool: %s", exc)
                entries = []
            if not entries:
                await wait_woken(self._stopping, delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            result = await self._sink.send([(e.key, e.value) for e in entries])
            if result.settled:
                # Acknowledge in the spool and count as one step that a stop cannot cut in two.
                self._committing = asyncio.create_task(self._commit(entries, result))
                await asyncio.shield(self._committing)
            if result.settled < len(entries) and not self._closing:
                await wait_woken(self._stopping, delay)
                delay = min(delay * 2, self._backoff[1])
            else:
                delay = self._backoff[0]

    async def _commit(self, entries: list[SpoolEntry], result: SendResult) -> None:
        settled = entries[: result.settled]
        batch = [(e.key, e.value, self._count(e.value)) for e in settled]
        replayed = await self._settle(batch, result)
        await asyncio.to_thread(self._spool.ack, settled[-1], len(settled))
        self._metrics.replayed(replayed)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self._metrics.depths(
            len(self._queue), self._spool.pending_records, self._spool.pending_bytes
        )
