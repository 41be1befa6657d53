"""Admitted requests' work in bounded passes of the event loop (``gateway/admission/turns.py``),
on the real loops the gateway runs on (uvloop, and asyncio's own)."""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Callable

import pytest
import uvloop

from gateway.admission import Admission, AdmissionSettings, Turns

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def run(loop: str, main: Callable[[], object]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())  # type: ignore[arg-type]


async def burst(turns: Turns, works: list[Callable[[], None]]) -> None:
    """What the endpoints do for requests read in one pass: each now, or later."""
    for work in works:
        if turns.now():
            work()
        else:
            turns.later(work)


async def within_passes(condition: Callable[[], bool], passes: int = 1000) -> None:
    """Let the loop make passes until ``condition`` holds (each pass polls the sockets)."""
    for _ in range(passes):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not true after {passes} passes of the loop")


@pytest.mark.parametrize("loop", LOOPS)
def test_light_load_is_worked_on_at_once(loop: str) -> None:
    async def main() -> None:
        turns = Turns(0.001)
        done: list[int] = []
        for i in range(3):  # one request a pass
            await burst(turns, [functools.partial(done.append, i)])
            assert done[-1] == i, "worked on as it was read"
            await asyncio.sleep(0)
        assert turns.deferred == 0
        assert turns.waiting == 0

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("slice_s", [0.0001, 10.0])
def test_a_pass_polls_the_sockets_again_once_its_slice_is_spent(loop: str, slice_s: float) -> None:
    """Each piece of work makes a socket readable. With a long slice the whole burst runs before
    the loop reads it (the old behaviour); with a short one the loop reads it between pieces:
    a request arriving meanwhile (a probe, one to refuse) is not held for the whole burst."""

    async def main() -> list[str]:
        events: list[str] = []
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)

        def readable() -> None:
            theirs.recv(4096)
            events.append("io")

        asyncio.get_running_loop().add_reader(theirs.fileno(), readable)

        def work(i: int) -> Callable[[], None]:
            def piece() -> None:
                ours.send(b"x")
                events.append(f"w{i}")
                deadline = time.perf_counter() + 0.0003  # a parse, longer than the slice
                while time.perf_counter() < deadline:
                    pass

            return piece

        turns = Turns(slice_s)
        await burst(turns, [work(i) for i in range(6)])
        await within_passes(lambda: "w5" in events and events[-1] == "io")
        asyncio.get_running_loop().remove_reader(theirs.fileno())
        ours.close()
        theirs.close()
        return events

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        events = runner.run(main())
    works = [e for e in events if e != "io"]
    assert works == [f"w{i}" for i in range(6)], "first come, first served"
    first_io = events.index("io")
    if slice_s >= 1:
        assert first_io == 6, events
    else:
        assert first_io <= 2, f"the loop read its sockets only after {events}"
        assert events.count("io") >= 3, events  # bytes of two pieces may be read at once


@pytest.mark.parametrize("loop", LOOPS)
def test_new_requests_queue_behind_waiting_ones_and_a_failing_piece_stops_nothing(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        turns = Turns(0.0)  # every pass: the first piece, then the slice is spent
        done: list[str] = []

        def boom() -> None:
            raise RuntimeError("a bug")

        await burst(turns, [lambda: done.append("a"), boom, lambda: done.append("b")])
        assert done == ["a"]
        assert turns.waiting == 2
        # read in a later pass, while others wait: behind them, not ahead
        assert not turns.now()
        turns.later(lambda: done.append("c"))
        await within_passes(lambda: turns.waiting == 0)
        assert done == ["a", "b", "c"]
        assert turns.deferred == 3
        await asyncio.sleep(0)
        assert turns.now(), "the backlog gone, work is done at once again"

    run(loop, main)
    assert "a bug" in caplog.text


def test_admission_owns_the_turns_and_zero_turns_them_off() -> None:
    assert Admission(AdmissionSettings()).turns is not None
    assert Admission(AdmissionSettings(pass_slice_s=0)).turns is None
