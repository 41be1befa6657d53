"""Dynamic batching: concurrent requests' rows are combined into one model call.

A batch closes when it holds ``max_batch_size`` rows or when its oldest request has waited
``max_batch_delay_s``, or, with ``close_when_idle``, as soon as a pass of the event loop brings
no new request. The queue is bounded, every request has a deadline, and a caller that
gives up (cancelled, disconnected, past its deadline) leaves the queue before its batch runs.

While a batch runs on the executor, a full batch waiting behind it is handed on at once, to
start from the model's thread the moment the running one ends: a saturated model goes from
one batch to the next without waiting for the event loop to come round (which, on a busy
loop, is a millisecond or more of every batch).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, InvalidStateError
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from gateway.errors import (
    DeadlineExceededError,
    GatewayError,
    ModelExecutionError,
    NotReadyError,
    OverloadedError,
)
from gateway.serving._wake import wait_woken

__all__ = ["BatchObserver", "Batcher", "RunFn", "Tensors"]

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
RunFn = Callable[[Tensors], Tensors]
# What a batch's run on the executor gives back: when it started and ended (perf_counter),
# and its outputs or the exception it raised.
_Ran = tuple[float, float, Tensors | None, Exception | None]


class BatchObserver(Protocol):
    """Receives what the batcher measures (metrics live outside the core)."""

    def batch_closed(self, rows: int, requests: int, reason: str) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def queue_depth(self, depth: int) -> None: ...
    def run_time(self, seconds: float) -> None: ...


class _NullObserver:
    def batch_closed(self, rows: int, requests: int, reason: str) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass

    def run_time(self, seconds: float) -> None:
        pass


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: Tensors
    rows: int
    key: tuple[object, ...]
    future: asyncio.Future[Tensors]
    enqueued: float
    deadline: float
    handle: asyncio.TimerHandle | None = field(default=None)


class Batcher:
    """Queues requests for one model version and runs them in batches on an executor.

    With ``inline`` the batches run on the event loop instead: for a model whose largest batch
    takes a fraction of a millisecond, handing it to a thread (submit, wake the thread, pass the
    GIL back and forth, wake the loop) costs more CPU than running it.

    A request of more than ``max_batch_size`` rows is not queued behind (or ahead of) the
    batches: it runs alone on the executor, one such request at a time, beside them, so one
    client's oversized request holds up neither the event loop nor the other callers' batches.

    Use as an async context manager; ``submit`` returns the request's own rows of every output.
    """

    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        *,
        name: str,
        max_batch_size: int,
        max_batch_delay_s: float,
        max_queue_size: int,
        max_concurrent_batches: int = 1,
        stackable: bool = True,
        inline: bool = False,
        close_when_idle: bool = False,
        observer: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self._run_fn = run
        self._executor = executor
        self._max_rows = max_batch_size if stackable else 1
        self._max_delay_s = max_batch_delay_s
        self._max_queue = max_queue_size
        self._concurrency = max_concurrent_batches
        self._stackable = stackable
        self._inline = inline
        self._close_when_idle = close_when_idle
        self._arrivals = 0
        self._observer: BatchObserver = observer or _NullObserver()
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        # set when the queue holds a full batch, or the running batch ended (see _hand_on)
        self._filled = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        # each worker's batch on the executor now, if it has one (see _may_hand_on)
        self._heads: set[_Handed] = set()
        self._oversized: set[asyncio.Task[None]] = set()
        self._oversized_slot = asyncio.Semaphore(1)
        self._closing = False
        self._stopped = False

    async def __aenter__(self) -> Batcher:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def closing(self) -> bool:
        """Stopping or stopped: it takes no more requests (``enqueue`` raises NotReadyError)."""
        return self._closing

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the batch workers."""
        if self._workers:
            return
        self._workers = [
            asyncio.create_task(self._work(), name=f"batcher:{self.name}:{i}")
            for i in range(self._concurrency)
        ]

    async def submit(self, inputs: Tensors, rows: int, deadline: float) -> Tensors:
        """Queue a request of ``rows`` rows; wait until the monotonic ``deadline`` for outputs."""
        return await self.enqueue(inputs, rows, deadline)

    def enqueue(
        self, inputs: Tensors, rows: int, deadline: float, arrived: float | None = None
    ) -> asyncio.Future[Tensors]:
        """Queue a request and return the future of its outputs, without waiting for it.

        The future fails with DeadlineExceededError at the monotonic ``deadline``; cancelling
        it takes the request out of the queue before its batch runs. ``arrived``
        (``time.perf_counter``; default now) is when the request was first seen: its queue
        wait counts from it.
        """
        if self._closing:
            raise NotReadyError(f"model {self.name} is shutting down")
        if len(self._queue) + len(self._oversized) >= self._max_queue:
            raise OverloadedError(f"model {self.name} is overloaded: its queue is full")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Tensors] = loop.create_future()
        if rows > self._max_rows and self._stackable:
            item = _Pending(inputs, rows, (), future, time.perf_counter(), deadline)
            item.handle = loop.call_at(deadline, _expire, future, self.name)
            task = loop.create_task(self._run_oversized(item), name=f"batcher:{self.name}:large")
            self._oversized.add(task)
            task.add_done_callback(self._oversized.discard)
            return future
        # Only requests whose inputs agree beyond the batch dimension can be stacked.
        key = tuple((n, a.shape[1:], a.dtype) for n, a in inputs.items()) if self._stackable else ()
        enqueued = time.perf_counter() if arrived is None else arrived
        item = _Pending(inputs, rows, key, future, enqueued, deadline)
        item.handle = loop.call_at(deadline, _expire, future, self.name)
        self._queue.append(item)
        self._queued_rows += rows
        self._arrivals += 1
        self._wake.set()
        if self._queued_rows >= self._max_rows:
            self._filled.set()
        return future

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop admitting, run what is queued (within ``timeout_s``), then end the workers."""
        if self._stopped:
            return
        self._stopped = True
        self._closing = True
        self._wake.set()
        self._filled.set()
        tasks = [*self._workers, *self._oversized]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._fail_queued(NotReadyError(f"model {self.name} shut down before the request ran"))

    # -- the worker ---------------------------------------------------------------------------

    async def _work(self) -> None:
        # batches handed to the executor and not yet answered: the running one, and at most
        # one full batch behind it
        handed: deque[_Handed] = deque()
        heads = self._heads
        try:
            while True:
                if not handed:
                    if not self._queue:
                        if self._closing:
                            return
                        self._wake.clear()
                        await self._wake.wait()
                        continue
                    reason = await self._wait_for_batch()
                    batch = self._take()
                    if not batch:
                        continue
                    if self._inline:
                        self._run_inline(batch, reason)
                        continue
                    handed.append(self._hand(batch, reason, None))
                    heads.add(handed[0])
                    if self._queued_rows >= self._max_rows:
                        self._filled.set()  # another worker may hand on what is left
                behind = await self._hand_on(handed[0])
                if behind is not None:
                    handed.append(behind)
                await self._answer(handed[0])
                heads.discard(handed.popleft())
                if handed:
                    heads.add(handed[0])
        except asyncio.CancelledError:
            gone = NotReadyError(f"model {self.name} shut down while the request ran")
            for each in handed:
                each.done.cancel()  # its outcome, if it comes, is nobody's
                _fail(each.batch, gone)
            raise
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("batch worker of %s died", self.name)
            error = ModelExecutionError(f"batch worker of {self.name} failed: {exc}")
            for each in handed:
                each.done.cancel()
                _fail(each.batch, error)
            self._fail_queued(error)
            raise
        finally:
            heads.difference_update(handed)

    def _hand(self, batch: list[_Pending], reason: str, after: _Handed | None) -> _Handed:
        """Give a batch to the executor: now, or (``after``) from the thread that ran that
        one, the moment it ends, without a turn of the event loop in between."""
        ran: ThreadFuture[_Ran] = ThreadFuture()
        try:
            inputs, rows = self._stack(batch)
        except Exception as exc:  # its callers hear of it (_answer); the worker goes on
            _settle(ran, None, exc)
            return _Handed(batch, 0, reason, ran, asyncio.wrap_future(ran))
        run = self._run_fn
        # Not ``after`` itself: its future keeps ``start`` (below) among its callbacks, and a
        # reference back would make each chained pair a cycle, its arrays held until the
        # collector's next full pass.
        chained = after is not None

        def timed() -> _Ran:
            start = time.perf_counter()
            # A batch handed on behind another may have lost every caller meanwhile (their
            # deadlines passed, or they left): then nothing runs. A future done stays done, so
            # reading it from this thread can only be late, never wrong.
            if chained and all(item.future.done() for item in batch):
                return start, start, None, None
            try:
                outputs = run(inputs)
            except Exception as exc:
                return start, time.perf_counter(), None, exc
            return start, time.perf_counter(), outputs, None

        executor = self._executor

        def start(_: object = None) -> None:  # here, or in the thread that ran ``after``
            try:
                inner = executor.submit(timed)
            except RuntimeError as exc:  # the executor is shut down
                _settle(ran, None, exc)
                return
            inner.add_done_callback(lambda done: _settle(ran, done, None))

        if after is None:
            start()
        else:
            after.ran.add_done_callback(start)
        return _Handed(batch, rows, reason, ran, asyncio.wrap_future(ran))

    async def _hand_on(self, running: _Handed) -> _Handed | None:
        """Wait for ``running`` to end; if a full batch is queued first, and no other worker
        could start it sooner, hand it on behind it."""
        done, filled = running.done, self._filled
        if not done.done() and not self._closing and not self._may_hand_on(running):
            done.add_done_callback(lambda _: filled.set())
            while not done.done() and not self._closing and not self._may_hand_on(running):
                filled.clear()
                await filled.wait()
        if done.done() or self._closing:
            return None
        batch = self._take()
        return self._hand(batch, "full", running) if batch else None

    def _may_hand_on(self, running: _Handed) -> bool:
        """A full batch is queued, and behind ``running`` is where it starts soonest: that one's
        thread is done already, or every worker has a batch still running on the executor. (A
        worker without one, or whose thread is done, takes the batch itself; handed on here, it
        would wait for ``running`` beside a free thread.)"""
        if self._queued_rows < self._max_rows:
            return False
        if running.ran.done():
            return True
        heads = self._heads
        return len(heads) >= len(self._workers) and not any(h.ran.done() for h in heads)

    async def _answer(self, handed: _Handed) -> None:
        """Wait for a handed batch's outputs and answer its callers."""
        try:
            start, end, outputs, error = await handed.done
        except Exception as exc:  # never ran: the executor is shut down
            _fail(handed.batch, _run_error(self.name, exc))
            return
        if outputs is None and error is None:
            return  # not run: its callers were all gone (see _hand); no batch to count
        self._observer.batch_closed(handed.rows, len(handed.batch), handed.reason)
        for item in handed.batch:
            self._observer.queue_wait(start - item.enqueued)
        self._observer.run_time(end - start)
        if outputs is None:
            _fail(handed.batch, _run_error(self.name, error))
            return
        self._deliver(handed.batch, handed.rows, outputs)

    async def _wait_for_batch(self) -> str:
        # Measured on perf_counter: uvloop's loop clock ticks in whole milliseconds, too coarse
        # for a 2 ms bound and for the queue-wait and run-time histograms.
        close_at = self._queue[0].enqueued + self._max_delay_s
        while self._queued_rows < self._max_rows:
            if self._closing:
                return "drain"
            if self._close_when_idle:
                # Let the event loop take in whatever has arrived (one pass over the ready
                # sockets); a pass that brings no new request closes the batch. Under light
                # load a request waits one pass, not max_batch_delay_s; under heavy load every
                # pass brings more, and the batch grows to its size or delay bound.
                seen = self._arrivals
                await asyncio.sleep(0)
                if not self._queue:
                    return "timeout"
                if self._arrivals == seen:
                    return "idle"
                if time.perf_counter() >= close_at:
                    return "timeout"
            else:
                left_s = close_at - time.perf_counter()
                if not self._queue or left_s <= 0:
                    return "timeout"
                # The loop's timers may fire up to a tick early: the next pass checks the clock.
                await wait_woken(self._wake, left_s)
        return "full"

    async def _run_oversized(self, item: _Pending) -> None:
        handed: _Handed | None = None
        try:
            async with self._oversized_slot:
                if not item.future.done():  # not cancelled nor past its deadline meanwhile
                    handed = self._hand([item], "full", None)
                    await self._answer(handed)
        except asyncio.CancelledError:
            if handed is not None:
                handed.done.cancel()  # its outcome, if it comes, is nobody's
            when = "before" if handed is None else "while"
            _fail([item], NotReadyError(f"model {self.name} shut down {when} the request ran"))
            raise

    def _take(self) -> list[_Pending]:
        now = asyncio.get_running_loop().time()
        batch: list[_Pending] = []
        skipped: list[_Pending] = []
        rows = 0
        key: tuple[object, ...] | None = None
        queue = self._queue
        while queue:
            item = queue.popleft()
            if item.future.done():  # cancelled by its caller or past its deadline
                self._queued_rows -= item.rows
                _cancel_timer(item)
                continue
            if item.deadline <= now:
                self._queued_rows -= item.rows
                _cancel_timer(item)
                _expire(item.future, self.name)
                continue
            if batch and (item.key != key or rows + item.rows > self._max_rows):
                skipped.append(item)
                if rows + item.rows > self._max_rows:
                    break
                continue
            key = item.key
            batch.append(item)
            rows += item.rows
            self._queued_rows -= item.rows
            if rows >= self._max_rows:
                break
        queue.extendleft(reversed(skipped))
        self._observer.queue_depth(len(queue))
        return batch

    def _stack(self, batch: list[_Pending]) -> tuple[Tensors, int]:
        """A closed batch's inputs as one set of arrays, and its rows."""
        rows = 0
        for item in batch:
            rows += item.rows
        if len(batch) == 1:
            return batch[0].inputs, rows
        inputs = {
            name: np.concatenate([item.inputs[name] for item in batch]) for name in batch[0].inputs
        }
        return inputs, rows

    def _run_inline(self, batch: list[_Pending], reason: str) -> None:
        """Run a batch now, on the event loop (``inline``: a model cheaper than the hand-off)."""
        start = time.perf_counter()
        for item in batch:
            self._observer.queue_wait(start - item.enqueued)
        try:
            inputs, rows = self._stack(batch)
            self._observer.batch_closed(rows, len(batch), reason)
            outputs = self._run_fn(inputs)
        except Exception as exc:
            _fail(batch, _run_error(self.name, exc))
            return
        finally:
            self._observer.run_time(time.perf_counter() - start)
        self._deliver(batch, rows, outputs)

    def _deliver(self, batch: list[_Pending], rows: int, outputs: Tensors) -> None:
        """Give each caller of a batch its own rows of every output."""
        if len(batch) == 1:
            _resolve(batch[0], outputs)
            return
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != rows:
                _fail(
                    batch,
                    ModelExecutionError(
                        f"model {self.name} returned {name!r} with shape {list(array.shape)} "
                        f"for a batch of {rows} rows"
                    ),
                )
                return
        offset = 0
        for item in batch:
            end = offset + item.rows
            _resolve(item, {name: array[offset:end] for name, array in outputs.items()})
            offset = end

    def _fail_queued(self, exc: GatewayError) -> None:
        while self._queue:
            item = self._queue.popleft()
            _cancel_timer(item)
            if not item.future.done():
                item.future.set_exception(exc)
        self._queued_rows = 0
        self._observer.queue_depth(0)


@dataclass(slots=True, eq=False)
class _Handed:
    """A batch given to the executor: its thread's future and the event loop's view of it."""

    batch: list[_Pending]
    rows: int
    reason: str  # why it closed
    ran: ThreadFuture[_Ran]
    done: asyncio.Future[_Ran]


def _settle(
    target: ThreadFuture[_Ran], source: ThreadFuture[_Ran] | None, error: BaseException | None
) -> None:
    """Copy ``source``'s outcome (or ``error``) to ``target``, unless it was cancelled."""
    try:
        if source is not None:
            if source.cancelled():  # dropped unrun: its executor shut down with cancel_futures
                error = RuntimeError("the executor shut down before the batch ran")
            else:
                error = source.exception()
                if error is None:
                    target.set_result(source.result())
                    return
        target.set_exception(error or RuntimeError("no outcome"))
    except InvalidStateError:
        pass  # cancelled meanwhile (its caller gone): nothing waits for it


def _run_error(name: str, exc: BaseException | None) -> GatewayError:
    """What the callers of a batch that failed at run time are told."""
    if isinstance(exc, GatewayError):
        return exc
    return ModelExecutionError(f"model {name} failed at run time: {exc}")


def _cancel_timer(item: _Pending) -> None:
    if item.handle is not None:
        item.handle.cancel()
        item.handle = None


def _resolve(item: _Pending, outputs: Tensors) -> None:
    _cancel_timer(item)
    if not item.future.done():
        item.future.set_result(outputs)


def _fail(batch: list[_Pending], exc: GatewayError) -> None:
    for item in batch:
        _cancel_timer(item)
        if not item.future.done():
            item.future.set_exception(exc)


def _expire(future: asyncio.Future[Tensors], name: str) -> None:
    if not future.done():
        future.set_exception(
            DeadlineExceededError(f"model {name}: the request's deadline passed before it ran")
        )
