"""Parse processes: large JSON bodies are decoded and turned into arrays outside the gateway's
interpreter, so their parse does not hold its GIL, and with it the event loop.

A worker thread parsing a 10 MB JSON body keeps the GIL for the whole of ``orjson.loads`` and
the conversion of its Python floats to numpy (100-300 ms): every other request waits. In a
parse process the gateway only pickles the body (a copy) and unpickles the arrays (raw
buffers); the checks against the model's signature stay with the gateway. What the processes
run lives in ``gateway._parse_process``, whose imports are light (no Starlette, Kafka client
or onnxruntime).

The pool starts at the first large body, so a gateway that never sees one pays nothing; until
its processes are up (0.3 s on a 2-core machine), large bodies are parsed on a worker thread
as before. The processes end with the gateway, even one killed by SIGKILL.

Nothing accepted is lost to a process that dies (killed, out of memory): the pool watches each
process itself (a pidfd on the loop; the executor alone misses a process killed while writing
its answer, see ``_replace``) and is replaced at once, and each parse it held is sent once
more, to the new pool once it is up. Which fallback is safe depends on whether the body could
have killed the process:

- a body that never reached a process (none up yet, or the pool already known to be broken
  when it came) is parsed on a worker thread, as before;
- a body that was handed to a process which then died may be what killed it (a body that
  makes the process run out of memory kills it every time), so it is parsed again only in a
  process, never on a thread, where it could take the gateway down; the pool cannot tell
  "parsing it" from "had not read it yet" (a process that died while idle, before the pool
  noticed), so that body too waits for the new process;
- a parse lost twice fails with ``ParseLostError`` (503, send it again).

Each pool replaced is counted (``on_lost``). The price of the second chance: a request whose
parse was lost waits for the new process to start. A body that kills its parser costs the
bodies parsed beside it their second chance: those lost with it twice are refused too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Generic, TypeVar

from gateway import _parse_process
from gateway.errors import NotReadyError

__all__ = ["ParseLostError", "ParsePool"]

log = logging.getLogger(__name__)

T = TypeVar("T")

Executor = concurrent.futures.ProcessPoolExecutor


class ParseLostError(NotReadyError):
    """The parse processes holding the request ended twice before answering (503: send it
    again)."""


class ParsePool:
    """``processes`` parse processes, started at the first ``submit``.

    ``submit`` must be called on the event loop's thread: a process gets the death signal
    when the thread that started it ends, and the loop's thread lasts as long as the gateway.
    """

    def __init__(self, processes: int, on_lost: Callable[[], None] = lambda: None) -> None:
        """``on_lost`` is called for each pool replaced because a process of it died."""
        self._processes = processes
        self._on_lost = on_lost
        self._executor: Executor | None = None
        self._ready: asyncio.Future[list[int]] | None = None
        self._closed = False
        self._pids: set[int] = set()  # of the processes started, as each answered first
        self._watched: list[int] = []  # pidfds of those processes (readable once one ends)
        self._sent: set[_Parse[Any]] = set()  # parses in a process, not yet answered

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T] | None:
        """``fn(*args)`` in a parse process; None when none is up yet (the first call starts
        them), the pool is found broken (replaced at once) or it is closed: then the caller
        parses on a thread. A parse lost with its process is sent once more, to the new pool
        (see above); lost twice, the future fails with ``ParseLostError``. It is cancelled when
        the pool closes before a parse sent again could start; its cancellation drops the
        parse if it has not started."""
        if self._closed:
            return None
        if self._ready is None:
            self._start()
            return None
        executor = self._executor
        if executor is None or not self._ready.done() or self._ready.exception() is not None:
            return None
        parse = _Parse(self, fn, args)
        try:
            parse.send(executor)
        except BrokenProcessPool:  # a process ended while idle: replaced, this one on a thread
            self._replace(executor)
            return None
        return parse.result

    async def started(self) -> list[int]:
        """Start the processes if need be; once they are up, their process ids."""
        if self._ready is None:
            self._start()
        assert self._ready is not None
        return await asyncio.shield(self._ready)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop the processes: a parse under way may finish within ``timeout_s``, then they
        are killed. Safe to call twice."""
        self._closed = True
        self._unwatch(kill=False)
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # Joined with its queues closed (a shutdown without waiting leaves multiprocessing to
        # warn at exit of semaphores it thinks leaked).
        closing = asyncio.ensure_future(asyncio.to_thread(_shut_down, executor))
        try:
            await asyncio.wait_for(asyncio.shield(closing), timeout_s)
        except TimeoutError:
            log.warning("parse processes still busy after %.0f s: killed", timeout_s)
            for pid in self._pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await closing

    def _start(self) -> None:
        """A new pool, its processes starting (``_ready`` when one is up)."""
        loop = asyncio.get_running_loop()
        ready = self._ready = loop.create_future()
        try:
            executor = concurrent.futures.ProcessPoolExecutor(
                self._processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_parse_process.start,
                initargs=(os.getpid(),),
            )
            # One call a process: each call starts a process while fewer than ``processes``
            # are idle; the first answer means the pool can take work.
            calls = [
                asyncio.wrap_future(executor.submit(_parse_process.pid))
                for _ in range(self._processes)
            ]
        except Exception as exc:
            log.exception("could not start the parse processes; large bodies stay on threads")
            ready.set_exception(exc)
            ready.exception()  # retrieved: the pool stays off
            return
        self._executor = executor

        def up(call: asyncio.Future[int]) -> None:
            if not call.cancelled() and call.exception() is None:
                self._pids.add(call.result())
                self._watch(executor, call.result())
            if ready.done():
                return
            if not call.cancelled() and call.exception() is None:
                ready.set_result(sorted(self._pids))
                log.info("parse processes for large bodies: %d starting, pid %s up",
                         self._processes, call.result())  # fmt: skip
                return
            error = None if call.cancelled() else call.exception()
            ready.set_exception(error or RuntimeError("the parse processes were stopped"))
            ready.exception()  # retrieved: nobody need wait for it
            if executor is self._executor and not self._closed:
                log.error("a parse process failed to start (%s); large bodies stay on threads "
                          "until the next one", error)  # fmt: skip
                self._executor = self._ready = None  # the next large body tries again
                executor.shutdown(wait=False, cancel_futures=True)

        for call in calls:
            call.add_done_callback(up)

    def _replace(self, broken: Executor) -> None:
        """Drop a pool whose process died and start another, at once: large bodies came."""
        if broken is not self._executor or self._closed:
            return
        self._on_lost()
        self._pids.clear()
        log.error("a parse process ended unexpectedly; starting new parse processes")
        # Its other processes are killed and its end of the answers' pipe closed: a process
        # killed while it wrote an answer leaves the executor's thread waiting for the rest of
        # it (for ever, while any process or the gateway holds the pipe open), so the executor
        # never finds itself broken and nothing sent to it would be answered.
        self._unwatch(kill=True)
        answers = getattr(broken, "_result_queue", None)
        broken.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(AttributeError, OSError):
            answers._writer.close()  # type: ignore[union-attr]
        self._executor = None
        lost = [parse for parse in self._sent if parse.sent_to is broken]
        self._start()
        for parse in lost:  # the pool does not answer them: lost, whatever it says later
            parse.lost_with(broken)

    def _watch(self, executor: Executor, pid: int) -> None:
        """Notice the end of process ``pid`` of ``executor`` by itself, not only through the
        executor (see ``_replace``)."""
        if executor is not self._executor or self._closed:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # ended already
            self._replace(executor)
            return
        except OSError:  # no pidfds here: the executor's own notice only
            return
        self._watched.append(pidfd)
        asyncio.get_running_loop().add_reader(pidfd, self._replace, executor)

    def _unwatch(self, kill: bool) -> None:
        loop = asyncio.get_running_loop()
        for pidfd in self._watched:
            loop.remove_reader(pidfd)
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        self._watched.clear()

    def _when_up(self, then: Callable[[Executor | None], None]) -> None:
        """``then(executor)`` once the pool's processes are up (started now if none are
        starting); ``then(None)`` if they fail to start or the pool is closed first."""
        if self._ready is None and not self._closed:
            self._start()
        ready, executor = self._ready, self._executor
        if ready is None or executor is None or self._closed:
            then(None)
            return

        def up(_: asyncio.Future[list[int]]) -> None:
            failed = ready.cancelled() or ready.exception() is not None
            then(None if failed or self._closed else executor)

        ready.add_done_callback(up)


class _Parse(Generic[T]):
    """One parse handed to the pool: its outcome, and its one second chance."""

    def __init__(self, pool: ParsePool, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self._pool = pool
        self._fn = fn
        self._args = args
        self._loop = asyncio.get_running_loop()
        self._work: concurrent.futures.Future[T] | None = None
        self._lost = False
        self.sent_to: Executor | None = None  # the pool it waits on, if any
        self.result: asyncio.Future[T] = self._loop.create_future()
        self.result.add_done_callback(self._dropped)

    def send(self, executor: Executor) -> None:
        """To ``executor``'s processes; BrokenProcessPool when it is known broken already."""
        work = self._work = executor.submit(self._fn, *self._args)
        self.sent_to = executor
        self._pool._sent.add(self)
        work.add_done_callback(lambda done: _call_soon(self._loop, self._settle, executor, done))

    def lost_with(self, executor: Executor) -> None:
        """``executor``, which held this parse, lost a process."""
        if self.result.done() or executor is not self.sent_to:
            return
        self.sent_to = None
        self._pool._sent.discard(self)
        if self._lost:
            self._fail()
        else:  # it may have killed the process itself: again in a process, never a thread
            self._lost = True
            log.warning("a parse was lost with its process; sending it to the new one")
            self._pool._when_up(self._again)

    def _settle(self, executor: Executor, done: concurrent.futures.Future[T]) -> None:
        if self.result.done() or executor is not self.sent_to:
            return  # answered, or lost with that pool already
        if done.cancelled():
            self.result.cancel()
            return
        error = done.exception()
        if isinstance(error, BrokenProcessPool):
            self._pool._replace(executor)
            self.lost_with(executor)  # if the replacement has not counted it lost already
        elif error is not None:
            self.result.set_exception(error)
        else:
            self.result.set_result(done.result())

    def _again(self, executor: Executor | None) -> None:
        if self.result.done():
            return
        if executor is None:
            if self._pool._closed:
                self.result.cancel()  # the gateway is stopping
            else:
                self._fail()  # the new processes did not start
            return
        try:
            self.send(executor)
        except BrokenProcessPool:  # the new pool lost a process before this came
            self._pool._replace(executor)
            self._fail()

    def _fail(self) -> None:
        self.result.set_exception(
            ParseLostError(
                "the process parsing the request body ended before it finished, twice "
                "(killed, or out of memory); send the request again"
            )
        )

    def _dropped(self, result: asyncio.Future[T]) -> None:
        self._pool._sent.discard(self)
        if result.cancelled() and self._work is not None:
            self._work.cancel()


def _call_soon(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[[Executor, concurrent.futures.Future[T]], None],
    executor: Executor,
    done: concurrent.futures.Future[T],
) -> None:
    """``fn(executor, done)`` on the loop, from the pool's thread; nothing once the loop is
    closed (the gateway has stopped: nobody waits)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, executor, done)


def _shut_down(executor: Executor) -> None:
    executor.shutdown(wait=True, cancel_futures=True)
