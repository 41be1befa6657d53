"""Admitted requests' parsing in bounded turns of the event loop, so refusals and probes stay fast.

One pass of the event loop reads every socket that is ready. Before this module, it also
decoded, validated and queued every admitted request it found there, so under overload a
pass grew with the load (10-23 ms at twice the capacity, ``loadtests/README.md``), and a
request arriving meanwhile (one to refuse, a liveness probe) waited in the kernel for the next
poll, where admission control cannot see it: refusals took 20-60 ms to come back.

Now each pass does at most ``slice_s`` of that work (``time.perf_counter``), first come first
served, and the rest waits here for the next passes. A refusal and a probe are answered as
they are read, so they wait at most about one bounded pass; a request waiting here is
waiting in the gateway, counted in its queue delay (from its first byte), so a backlog that
stands here makes the gate shed. Under light load every request is worked on at once, as
before: the only cost is one callback a pass that has inference calls in it.

Cancellation: work waiting here checks, when its turn comes, whether its caller has gone
(the endpoint's ``waiting`` future) and then only gives its place back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

__all__ = ["Turns"]

log = logging.getLogger(__name__)


class Turns:
    """The admitted requests of one process whose parsing waits for a later pass of the loop.

    Invariant: a pass is scheduled (``_next_pass`` on the loop's ready queue) or running
    exactly when ``_pass_started`` is not None, and never more than one; so whenever work waits
    here, a pass will run it.
    """

    __slots__ = ("_pass_started", "_slice_s", "_waiting", "deferred")

    def __init__(self, slice_s: float) -> None:
        self._slice_s = slice_s
        self._waiting: deque[Callable[[], None]] = deque()
        self._pass_started: float | None = None
        self.deferred = 0  # requests that have waited here, ever

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn."""
        return len(self._waiting)

    def now(self) -> bool:
        """Whether an admitted request may be worked on at once; if not, pass it to ``later``."""
        if self._waiting:
            return False  # first come, first served
        started = self._pass_started
        now = time.perf_counter()
        if started is None:
            self._schedule(now)
            return True
        return now - started < self._slice_s

    def later(self, work: Callable[[], None]) -> None:
        """Run ``work`` in a later pass, after everything that waits already."""
        self._waiting.append(work)
        self.deferred += 1
        if self._pass_started is None:
            self._schedule(time.perf_counter())

    def _schedule(self, now: float) -> None:
        self._pass_started = now
        asyncio.get_running_loop().call_soon(self._next_pass)

    def _next_pass(self) -> None:
        # Runs once per pass of the loop that had inference work, before its next poll.
        waiting = self._waiting
        if not waiting:
            self._pass_started = None
            return
        started = time.perf_counter()
        # While it runs, work may queue more (an answer starts the next request pipelined on
        # its connection): that waits behind, and schedules no second pass (it is not None).
        self._pass_started = started
        end = started + self._slice_s
        while waiting:
            work = waiting.popleft()
            try:
                work()
            except Exception:  # the work answers its own errors; this is a bug, not a stall
                log.exception("error in an inference call's deferred work")
            if time.perf_counter() >= end:
                break
        # One more pass, also when nothing is left: until it runs, calls read from the
        # sockets count against this pass's slice, and then it finds nothing and stops.
        asyncio.get_running_loop().call_soon(self._next_pass)
