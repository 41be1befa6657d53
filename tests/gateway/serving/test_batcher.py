from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gateway.errors import (
    DeadlineExceededError,
    ModelExecutionError,
    NotReadyError,
    OverloadedError,
)
from gateway.serving.batcher import Batcher, RunFn, Tensors


class Recorder:
    """A model that doubles its input and remembers the batch sizes it saw."""

    def __init__(self, delay_s: float = 0.0, fail_when: float | None = None) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.fail_when = fail_when
        self.release = threading.Event()
        self.release.set()
        self.called = threading.Event()

    def __call__(self, inputs: Tensors) -> Tensors:
        self.called.set()
        self.release.wait(5)
        x = inputs["x"]
        self.batches.append(x.shape[0])
        if self.fail_when is not None and (x == self.fail_when).any():
            raise ModelExecutionError("model failed at run time: poisoned row")
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"y": x * 2, "sum": x.sum(axis=1)}


def rows(*values: float) -> Tensors:
    return {"x": np.array([[v, v] for v in values], dtype=np.float32)}


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def running(model: Recorder) -> None:
    """Wait until a batch is inside the model (however busy the machine is)."""
    assert await asyncio.to_thread(model.called.wait, 30)


async def until(condition: Callable[[], bool]) -> None:
    """Let the event loop go round until ``condition`` holds (what it waits on is the loop's)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def make(model: RunFn, executor: ThreadPoolExecutor, **kw: object) -> Batcher:
    options: dict[str, object] = {
        "name": "m/1",
        "max_batch_size": 8,
        "max_batch_delay_s": 0.02,
        "max_queue_size": 100,
    }
    options.update(kw)
    return Batcher(model, executor, **options)  # type: ignore[arg-type]


async def test_concurrent_requests_share_one_batch_and_get_their_own_rows() -> None:
    model = Recorder()
    with ThreadPoolExecutor(1) as executor:
        async with make(model, executor) as batcher:
            results = await asyncio.gather(
                batcher.submit(rows(1), 1, deadline()),
                batcher.submit(rows(2, 3), 2, deadline()),
                batcher.submit(rows(4), 1, deadline()),
            )
    assert model.batches == [4]
    assert results[0]["y"].tolist() == [[2, 2]]
    assert results[1]["y"].tolist() == [[4, 4], [6, 6]]
    assert results[1]["sum"].tolist() == [4, 6]
    assert results[2]["y"].tolist() == [[8, 8]]


async def test_batch_closes_when_full_without_waiting_for_the_delay() -> None:
    model = Recorder()
    with ThreadPoolExecutor(1) as executor:
        async with make(model, executor, max_batch_size=4, max_batch_delay_s=10.0) as batcher:
            start = time.monotonic()
            await asyncio.gather(*(batcher.submit(rows(i), 1, deadline(20)) for i in range(4)))
            assert time.monotonic() - start < 1.0
    assert model.batches == [4]


async def test_batch_closes_after_the_delay_counted_from_the_first_request() -> None:
    model = Recorder()
    with ThreadPoolExecutor(1) as executor:
        async with make(model, executor, max_batch_delay_s=0.05) as batcher:
            start = time.monotonic()
            await batcher.submit(rows(1), 1, deadline())
            waited = time.monotonic() - start
    assert 0.04 <= waited < 1.0
    assert model.batches == [1]


async def test_rows_never_exceed_max_batch_size_and_order_is_kept() -> None:
    model = Recorder()
    with ThreadPoolExecutor(1) as executor:
        async with make(model, executor, max_batch_size=4) as batcher:
            results = await asyncio.gather(
                *(batcher.submit(rows(i, i + 0.5), 2, deadline()) for i in range(5))
            )
    assert all(size <= 4 for size in model.batches)
    assert sum(model.batches) == 10
    for i, result in enumerate(results):
        assert result["y"][:, 0].tolist() == [2 * i, 2 * i + 1]


async def test_request_larger_than_max_batch_runs_alone() -> None:
    model = Recorder()
    with ThreadPoolExecutor(1) as executor:
        async with make(model, executor, max_batch_size=2) as batcher:
            result = await batcher.submit(rows(1, 2, 3, 4, 5), 5, deadline())
    assert model.batches == [5]
    assert result["y"].shape == (5, 2)


async def test_model_error_reaches_every_caller_of_that_batch_and_only_them() -> None:
    model = Recorder(fail_when=666)
    with ThreadPoolExecutor(1) as executor:
        async with make(model, executor, max_batch_size=2, max_batch_delay_s=0.05) as batcher:
            results = await asyncio.gather(
                batcher.submit(rows(666), 1, deadline()),
                batcher.submit(rows(1), 1, deadline()),
                batcher.submit(rows(2), 1, deadline()),
                return_exceptions=True,
            )
    assert isinstance(results[0], ModelExecutionError)
    assert isinstance(results[1], ModelExecutionError)
    assert not isinstance(results[2], BaseException)
    assert results[2]["y"].tolist() == [[4, 4]]


async def test_full_queue_is_refused_at_once() -> None:
    model = Recorder()
    model.release.clear()  # the first batch blocks in the model
    with ThreadPoolExecutor(1) as executor:
        batcher = make(model, executor, max_batch_size=1, max_batch_delay_s=0, max_queue_size=2)
        async with batcher:
            first = asyncio.create_task(batcher.submit(rows(0), 1, deadline()))
            await running(model)  # the queue is empty again
            queued = [asyncio.create_task(batcher.submit(rows(i), 1, deadline())) for i in (1, 2)]
            await asyncio.sleep(0)
            with pytest.raises(OverloadedError) as info:
                await batcher.submit(rows(3), 1, deadline())
            assert info.value.retry_after_s > 0
            model.release.set()
            await asyncio.gather(first, *queued)


async def test_missed_deadline_answers_instead_of_hanging_and_never_runs() -> None:
    model = Recorder()
    model.release.clear()
    with ThreadPoolExecutor(1) as executor:
        batcher = make(model, executor, max_batch_size=1, max_batch_delay_s=0)
        async with batcher:
            blocker = asyncio.create_task(batcher.submit(rows(0), 1, deadline()))
            await running(model)
            # the model is held until after this answer: without the deadline it would hang
            with pytest.raises(DeadlineExceededError):
                await batcher.submit(rows(7), 1, deadline(0.1))
            model.release.set()
            await blocker
    assert model.batches == [1]  # the expired request was dropped before running


async def test_cancelled_caller_leaves_its_batch_before_it_runs() -> None:
    model = Recorder()
    with ThreadPoolExecutor(1) as executor:
        async with make(model, executor, max_batch_delay_s=0.1) as batcher:
            gone = asyncio.create_task(batcher.submit(rows(9), 1, deadline()))
            stays = asyncio.create_task(batcher.submit(rows(1), 1, deadline()))
            await asyncio.sleep(0)  # both are queued; the batch closes 0.1 s after the first
            gone.cancel()
            result = await stays
            with pytest.raises(asyncio.CancelledError):
                await gone
    assert model.batches == [1]
    assert result["y"].tolist() == [[2, 2]]


async def test_stop_drains_what_is_queued_and_then_refuses() -> None:
    model = Recorder(delay_s=0.01)
    with ThreadPoolExecutor(1) as executor:
        batcher = make(model, executor, max_batch_size=2, max_batch_delay_s=1.0)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit(rows(i), 1, deadline())) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.stop(timeout_s=5)
        results = await asyncio.gather(*pending)
        assert [r["y"][0, 0] for r in results] == [0, 2, 4, 6, 8]
        with pytest.raises(NotReadyError):
            await batcher.submit(rows(1), 1, deadline())
        await batcher.stop()  # safe twice


async def test_inputs_of_different_trailing_shapes_are_not_stacked() -> None:
    model = Recorder()
    with ThreadPoolExecutor(1) as executor:
        async with make(model, executor) as batcher:
            narrow = {"x": np.ones((1, 2), dtype=np.float32)}
            wide = {"x": np.ones((1, 3), dtype=np.float32)}
            a, b = await asyncio.gather(
                batcher.submit(narrow, 1, deadline()), batcher.submit(wide, 1, deadline())
            )
    assert a["y"].shape == (1, 2)
    assert b["y"].shape == (1, 3)
    assert sorted(model.batches) == [1, 1]


async def test_unstackable_model_runs_one_request_per_call() -> None:
    model = Recorder()
    with ThreadPoolExecutor(1) as executor:
        async with make(model, executor, stackable=False) as batcher:
            await asyncio.gather(*(batcher.submit(rows(i), 1, deadline()) for i in range(3)))
    assert model.batches == [1, 1, 1]


async def test_output_without_batch_rows_fails_the_batch_clearly() -> None:
    def broken(inputs: Tensors) -> Tensors:
        return {"y": np.zeros(1, dtype=np.float32)}

    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(
            broken, executor, name="m/1", max_batch_size=4, max_batch_delay_s=0.02,
            max_queue_size=10,
        )  # fmt: skip
        async with batcher:
            results = await asyncio.gather(
                batcher.submit(rows(1), 1, deadline()),
                batcher.submit(rows(2), 1, deadline()),
                return_exceptions=True,
            )
    assert all(isinstance(r, ModelExecutionError) for r in results)
    assert "shape" in str(results[0])


@pytest.mark.parametrize("inline", [False, True])
async def test_close_when_idle_answers_a_lone_request_without_waiting_the_delay(
    inline: bool,
) -> None:
    model = Recorder()
    with ThreadPoolExecutor(1) as pool:
        batcher = make(model, pool, max_batch_delay_s=2.0, close_when_idle=True, inline=inline)
        async with batcher:
            started = time.perf_counter()
            result = await batcher.submit(rows(3), 1, deadline())
            assert time.perf_counter() - started < 0.5  # not the 2 s bound
            assert result["y"].tolist() == [[6, 6]]
            # requests queued in one pass of the loop still share a batch
            await asyncio.gather(*(batcher.submit(rows(i), 1, deadline()) for i in range(5)))
    assert model.batches == [1, 5]


async def test_close_when_idle_keeps_filling_while_requests_keep_coming() -> None:
    model = Recorder()
    with ThreadPoolExecutor(1) as pool:
        batcher = make(model, pool, max_batch_size=64, max_batch_delay_s=2.0, close_when_idle=True)
        async with batcher:

            async def trickle() -> list[Tensors]:
                calls = []
                for i in range(10):  # one new request on each pass of the event loop
                    calls.append(asyncio.ensure_future(batcher.submit(rows(i), 1, deadline())))
                    await asyncio.sleep(0)
                return list(await asyncio.gather(*calls))

            answers = await trickle()
    assert [a["y"][0, 0] for a in answers] == [2 * i for i in range(10)]
    assert sum(model.batches) == 10
    assert len(model.batches) <= 3  # not one batch per request


class TimingObserver:
    """Keeps what the batcher measures."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.runs: list[float] = []
        self.closed: list[tuple[int, int, str]] = []

    def batch_closed(self, rows: int, requests: int, reason: str) -> None:
        self.closed.append((rows, requests, reason))

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def queue_depth(self, depth: int) -> None:
        pass

    def run_time(self, seconds: float) -> None:
        self.runs.append(seconds)


def test_batch_delay_and_timings_have_sub_millisecond_resolution_under_uvloop() -> None:
    """uvloop's clock ticks in whole milliseconds; the 2 ms bound and the histograms must not."""
    import uvloop

    seen: list[float] = []  # time from submit to the model's call, per lone request
    model = Recorder()
    observer = TimingObserver()

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = make(model, pool, max_batch_delay_s=0.002, observer=observer)
            async with batcher:
                for _ in range(50):
                    started = time.perf_counter()
                    await batcher.submit(rows(1), 1, deadline())
                    seen.append(time.perf_counter() - started)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    # the batch never closes before its delay (a busy machine can only make it later)
    assert min(seen) >= 0.002
    assert min(observer.waits) >= 0.002
    # run times of a sub-millisecond model are measured, not rounded to 0
    assert all(r > 0 for r in observer.runs)
    assert len(set(observer.runs)) > 1


async def test_an_inline_batcher_runs_a_request_over_max_batch_size_on_the_executor() -> None:
    threads: list[str] = []

    def model(inputs: Tensors) -> Tensors:
        threads.append(threading.current_thread().name)
        return {"y": inputs["x"] * 2}

    with ThreadPoolExecutor(1, thread_name_prefix="batch-worker") as pool:
        async with make(model, pool, max_batch_size=4, inline=True) as batcher:
            small = await batcher.submit(rows(1, 2), 2, deadline())
            large = await batcher.submit(rows(*range(10)), 10, deadline())
    assert small["y"].shape == (2, 2)
    assert large["y"].shape == (10, 2)
    main = threading.current_thread().name
    assert threads[0] == main  # small batches stay on the event loop
    assert threads[1].startswith("batch-worker")  # the client-sized one does not


async def test_an_oversized_request_holds_up_no_other_batch() -> None:
    release = threading.Event()

    def model(inputs: Tensors) -> Tensors:
        if inputs["x"].shape[0] > 4:
            release.wait(10)  # the large one runs until the small ones are answered
        return {"y": inputs["x"] * 2}

    with ThreadPoolExecutor(2) as pool:
        async with make(model, pool, max_batch_size=4) as batcher:
            large = batcher.enqueue(rows(*range(10)), 10, deadline())
            small = await batcher.submit(rows(1), 1, deadline())
            assert small["y"].tolist() == [[2, 2]]
            assert not large.done()
            release.set()
            assert (await large)["y"].shape == (10, 2)


class Gated:
    """A model held on a gate, counting its calls from the thread that makes them."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0
        self.second = threading.Event()
        self.first = threading.Event()

    def __call__(self, inputs: Tensors) -> Tensors:
        self.calls += 1
        (self.first if self.calls == 1 else self.second).set()
        self.gate.wait(30)
        return {"y": inputs["x"] * 2}


async def test_a_full_batch_behind_a_running_one_starts_without_the_event_loop() -> None:
    model = Gated()
    with ThreadPoolExecutor(1) as executor:
        async with make(model, executor, max_batch_size=2, max_batch_delay_s=0) as batcher:
            first = asyncio.create_task(batcher.submit(rows(1), 1, deadline(60)))
            assert await asyncio.to_thread(model.first.wait, 30)
            behind = [asyncio.create_task(batcher.submit(rows(v), 1, deadline(60))) for v in (2, 3)]
            await asyncio.sleep(0)  # queued: a full batch
            await asyncio.sleep(0)  # the worker hands it on behind the running one
            # Hold the event loop (this thread) and let the model go: the second batch must
            # start from the model's thread, since the loop cannot come round to start it.
            model.gate.set()
            started_without_loop = model.second.wait(30)
            assert started_without_loop
            results = await asyncio.gather(first, *behind)
    assert [r["y"][0, 0] for r in results] == [2, 4, 6]
    assert model.calls == 2


async def test_callers_of_a_batch_handed_on_hear_of_a_shutdown_that_cuts_it_off() -> None:
    model = Gated()
    with ThreadPoolExecutor(1) as executor:
        batcher = make(model, executor, max_batch_size=2, max_batch_delay_s=0)
        batcher.start()
        first = asyncio.create_task(batcher.submit(rows(1), 1, deadline(60)))
        assert await asyncio.to_thread(model.first.wait, 30)
        behind = [asyncio.create_task(batcher.submit(rows(v), 1, deadline(60))) for v in (2, 3)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await batcher.stop(timeout_s=0.05)  # the model is still held: the worker is cancelled
        for task in (first, *behind):
            with pytest.raises(NotReadyError, match="shut down while the request ran"):
                await task
        model.gate.set()


async def test_a_batch_for_a_shut_down_executor_fails_its_callers_and_the_worker_goes_on() -> None:
    model = Recorder()
    executor = ThreadPoolExecutor(1)
    executor.shutdown()
    async with make(model, executor, max_batch_delay_s=0) as batcher:
        for value in (1, 2):  # the second is answered too: the worker did not die
            with pytest.raises(ModelExecutionError, match="cannot schedule new futures"):
                await batcher.submit(rows(value), 1, deadline())
    assert model.batches == []


async def test_a_batch_handed_on_is_freed_once_answered_not_left_to_the_collector() -> None:
    # A chained batch must not make a reference cycle with the one it followed: its arrays
    # would stay until the collector's next full pass, which the server keeps rare.
    gated = Gated()
    made: list[weakref.ref[np.ndarray]] = []

    def model(inputs: Tensors) -> Tensors:
        outputs = gated(inputs)
        made.append(weakref.ref(outputs["y"]))
        return outputs

    gc.disable()
    try:
        with ThreadPoolExecutor(1) as executor:
            async with make(model, executor, max_batch_size=2, max_batch_delay_s=0) as batcher:
                first = batcher.enqueue(rows(1), 1, deadline(60))
                assert await asyncio.to_thread(gated.first.wait, 30)
                behind = [batcher.enqueue(rows(v), 1, deadline(60)) for v in (2, 3)]
                await until(lambda: batcher.depth == 0)  # handed on behind the running one
                gated.gate.set()
                await asyncio.wait([first, *behind])
                assert [f.result()["y"][0, 0] for f in (first, *behind)] == [2, 4, 6]
                del first, behind
                await asyncio.wrap_future(executor.submit(int))  # its thread is done with them
                assert gated.calls == 2
                assert made[1]() is None, "the handed batch's outputs outlive its answers"
    finally:
        gc.enable()


async def test_a_handed_on_batch_whose_callers_all_left_neither_runs_nor_counts() -> None:
    model = Gated()
    observer = TimingObserver()
    with ThreadPoolExecutor(1) as executor:
        options: dict[str, object] = {"max_batch_size": 2, "max_batch_delay_s": 0}
        async with make(model, executor, observer=observer, **options) as batcher:
            first = batcher.enqueue(rows(1), 1, deadline(60))
            assert await asyncio.to_thread(model.first.wait, 30)
            behind = [batcher.enqueue(rows(v), 1, deadline(60)) for v in (2, 3)]
            await until(lambda: batcher.depth == 0)  # handed on behind the running one
            for future in behind:
                future.cancel()
            model.gate.set()
            assert (await first)["y"].tolist() == [[2, 2]]
    assert model.calls == 1
    # what the metrics count as batches run: the first one only
    assert observer.closed == [(1, 1, "timeout")]
    assert len(observer.runs) == 1
    assert len(observer.waits) == 1


async def test_a_batch_its_executor_drops_unrun_fails_its_callers_and_the_worker_goes_on() -> None:
    model = Recorder()
    executor = ThreadPoolExecutor(1)
    hold = threading.Event()
    executor.submit(hold.wait, 30)  # its only thread busy (with another model's batch, say)
    try:
        async with make(model, executor, max_batch_delay_s=0) as batcher:
            queued = batcher.enqueue(rows(1), 1, deadline(5))
            await until(lambda: batcher.depth == 0)  # handed to the executor, waiting there
            executor.shutdown(wait=False, cancel_futures=True)
            with pytest.raises(ModelExecutionError, match="executor shut down before the batch"):
                await queued
            with pytest.raises(ModelExecutionError, match="cannot schedule new futures"):
                await batcher.submit(rows(2), 1, deadline())
    finally:
        hold.set()
    assert model.batches == []


async def test_a_batch_another_worker_can_start_at_once_is_not_handed_on() -> None:
    # batching disabled: one request a call, as many at once as there are worker threads
    model = Gated()
    with ThreadPoolExecutor(2) as executor:
        options: dict[str, object] = {"stackable": False, "max_concurrent_batches": 2}
        async with make(model, executor, max_batch_delay_s=0, **options) as batcher:
            two = [batcher.enqueue(rows(v), 1, deadline(60)) for v in (1, 2)]
            assert await asyncio.to_thread(model.first.wait, 30)
            assert await asyncio.to_thread(model.second.wait, 30), "queued behind the first"
            # both threads busy: a third is handed on behind one of them
            third = batcher.enqueue(rows(3), 1, deadline(60))
            await until(lambda: batcher.depth == 0)
            model.gate.set()
            results = [(await f)["y"][0, 0] for f in (*two, third)]
    assert results == [2, 4, 6]
    assert model.calls == 3


@pytest.mark.parametrize("inline", [False, True])
async def test_a_batch_that_cannot_be_stacked_fails_its_callers_and_the_worker_goes_on(
    monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    model = Recorder()
    real = np.concatenate

    def failing(arrays: object, *args: object, **kwargs: object) -> np.ndarray:
        if any(float(a[0, 0]) == 13 for a in arrays):  # type: ignore[attr-defined]
            raise MemoryError("no room for the batch")
        return real(arrays, *args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(np, "concatenate", failing)
    with ThreadPoolExecutor(1) as executor:
        async with make(model, executor, max_batch_size=2, inline=inline) as batcher:
            doomed = [batcher.submit(rows(v), 1, deadline()) for v in (13, 1)]
            outcomes = await asyncio.gather(*doomed, return_exceptions=True)
            assert all(isinstance(o, ModelExecutionError) for o in outcomes), outcomes
            assert "no room for the batch" in str(outcomes[0])
            # the worker lives: the next batch is answered
            results = await asyncio.gather(
                *(batcher.submit(rows(v), 1, deadline()) for v in (2, 3))
            )
    assert [r["y"][0, 0] for r in results] == [4, 6]
