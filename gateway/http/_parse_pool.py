"""Parse processes: large JSON bodies are decoded and turned into arrays outside the gateway's
interpreter, so their parse does not hold its GIL, and with it the event loop.

A worker thread parsing a 10 MB JSON body keeps the GIL for the whole of ``orjson.loads`` and
the conversion of its Python floats to numpy (100-300 ms): every other request waits. In a
parse process the gateway only pickles the body (a copy) and unpickles the arrays (raw
buffers); the checks against the model's signature stay with the gateway.

The pool starts at the first large body, so a gateway that never sees one pays nothing; until
its processes are up (about a second), large bodies are parsed on a worker thread as before.
A process that dies (killed, out of memory) fails the parses it held with ``ParseLostError``
and the pool is replaced. The processes end with the gateway, even one killed by SIGKILL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from gateway.errors import NotReadyError
from gateway.http._asgi import Headers, decode_body

__all__ = ["ParseLostError", "ParsePool", "parse_in_process"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


class ParseLostError(NotReadyError):
    """The parse process holding the request ended before it answered (503: send it again)."""


def parse_in_process(
    body: bytes | list[bytes], encodings: Headers, limit: int, parse: Callable[[bytes], T]
) -> T:
    """Join the body, undo its Content-Encoding (``encodings``: those header pairs; at most
    ``limit`` bytes) and ``parse`` it: what a parse process runs for one request. ``parse``
    must be picklable (a module-level function, or a ``functools.partial`` of one)."""
    whole = body if isinstance(body, bytes) else b"".join(body)
    return parse(decode_body(whole, encodings, limit))


def _start_child(parent: int) -> None:
    """A parse process's first act: end when the gateway ends (Linux sends the signal even
    when the gateway is SIGKILLed), and leave Ctrl-C (SIGINT to the whole group) to the
    gateway, which stops its processes itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the gateway ended before the call above took effect
        os._exit(1)


def _pid() -> int:
    return os.getpid()


class ParsePool:
    """``processes`` parse processes, started at the first ``submit``.

    ``submit`` must be called on the event loop's thread: a process gets the death signal
    when the thread that started it ends, and the loop's thread lasts as long as the gateway.
    """

    def __init__(self, processes: int, on_lost: Callable[[], None] = lambda: None) -> None:
        """``on_lost`` is called for each pool replaced because a process of it died."""
        self._processes = processes
        self._on_lost = on_lost
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._ready: asyncio.Future[list[int]] | None = None
        self._closed = False
        self._pids: set[int] = set()  # of the processes started, as each answered first

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T] | None:
        """``fn(*args)`` in a parse process; None when none is up yet (the first call starts
        them) or the pool is closed: then the caller parses on a thread. The future fails with
        ``ParseLostError`` when the process ends before it answers; its cancellation drops the
        parse if it has not started."""
        if self._closed:
            return None
        if self._ready is None:
            self._start()
            return None
        executor = self._executor
        if executor is None or not self._ready.done() or self._ready.exception() is not None:
            return None
        loop = asyncio.get_running_loop()
        try:
            work = executor.submit(fn, *args)
        except BrokenProcessPool:  # a process ended while idle: replaced, this one on a thread
            self._replace(executor)
            return None
        result: asyncio.Future[T] = loop.create_future()

        def settle(done: concurrent.futures.Future[T]) -> None:
            if result.cancelled():
                return
            if done.cancelled():
                result.cancel()
                return
            error = done.exception()
            if isinstance(error, BrokenProcessPool):
                self._replace(executor)
                result.set_exception(
                    ParseLostError(
                        "the process parsing the request body ended before it finished "
                        "(killed, or out of memory); send the request again"
                    )
                )
            elif error is not None:
                result.set_exception(error)
            else:
                result.set_result(done.result())

        work.add_done_callback(lambda done: _call_soon(loop, settle, done))
        result.add_done_callback(lambda f: work.cancel() if f.cancelled() else None)
        return result

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
        loop = asyncio.get_running_loop()
        ready = self._ready = loop.create_future()
        try:
            executor = concurrent.futures.ProcessPoolExecutor(
                self._processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_child,
                initargs=(os.getpid(),),
            )
            # One call a process: each call starts a process while fewer than ``processes``
            # are idle; the first answer means the pool can take work.
            calls = [asyncio.wrap_future(executor.submit(_pid)) for _ in range(self._processes)]
        except Exception as exc:
            log.exception("could not start the parse processes; large bodies stay on threads")
            ready.set_exception(exc)
            ready.exception()  # retrieved: the pool stays off
            return
        self._executor = executor

        def up(call: asyncio.Future[int]) -> None:
            if not call.cancelled() and call.exception() is None:
                self._pids.add(call.result())
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

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        """Drop a pool whose process died and start another, at once: large bodies came."""
        if broken is not self._executor or self._closed:
            return
        self._on_lost()
        self._pids.clear()
        log.error("a parse process ended unexpectedly; starting new parse processes")
        broken.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._start()


def _call_soon(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[[concurrent.futures.Future[T]], None],
    done: concurrent.futures.Future[T],
) -> None:
    """``fn(done)`` on the loop, from the pool's thread; nothing once the loop is closed (the
    gateway has stopped: nobody waits)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, done)


def _shut_down(executor: concurrent.futures.ProcessPoolExecutor) -> None:
    executor.shutdown(wait=True, cancel_futures=True)
