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


@pytest.mark.parametrize("loop", LOOPS)
def test_work_queued_by_a_pass_runs_in_the_same_single_pass_chain(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer may start the next call pipelined on its connection, which then waits here:
    that must not schedule a second pass beside the running one (two passes an iteration
    would double the work done between polls)."""
    iterations = [0]
    passes: list[int] = []
    original = Turns._next_pass

    def counted(self: Turns) -> None:
        passes.append(iterations[0])
        original(self)

    monkeypatch.setattr(Turns, "_next_pass", counted)

    async def main() -> None:
        running = asyncio.get_running_loop()

        def tick() -> None:  # once per iteration of the loop
            iterations[0] += 1
            if not stop:
                running.call_soon(tick)

        stop = False
        running.call_soon(tick)
        turns = Turns(0.0)
        done: list[str] = []

        def piece(i: int) -> Callable[[], None]:
            def run() -> None:
                done.append(f"p{i}")
                if turns.now():  # the pipelined follow-up of this piece
                    done.append(f"f{i}")
                else:
                    turns.later(lambda: done.append(f"f{i}"))

            return run

        await burst(turns, [piece(i) for i in range(6)])
        await within_passes(lambda: len(done) == 12 and turns.waiting == 0)
        await within_passes(lambda: not passes or passes[-1] < iterations[0] - 1)
        stop = True

    run(loop, main)
    assert len(passes) == len(set(passes)), f"two passes in one iteration: {passes}"


def test_a_call_whose_caller_left_while_waiting_is_never_decoded() -> None:
    from prometheus_client import CollectorRegistry

    from gateway.http.endpoints import AppState, InferEndpoint
    from gateway.metrics import GatewayMetrics

    async def main() -> None:
        admission = Admission(AdmissionSettings(pass_slice_s=1e-9))
        turns = admission.turns
        assert turns is not None
        state = AppState(
            version="t",
            metrics=GatewayMetrics(CollectorRegistry(), "t"),
            max_body_bytes=1 << 20,
            routing_key_header=b"x-routing-key",
            pin_header=b"x-model-variant",
            service=_RoutesEverything(),  # type: ignore[arg-type]
            admission=admission,
        )
        endpoint = InferEndpoint(state)
        decoded: list[bytes] = []
        setattr(endpoint, "decode", lambda headers, body: decoded.append(body))  # noqa: B010
        answers: list[object] = []
        assert turns.now()  # this pass's slice is spent: the next call waits
        waiting = endpoint.handle("m", None, [], b"{}", answers.append, time.perf_counter())
        assert waiting is not None
        assert admission.gate("m").in_flight == 1
        waiting.cancel()  # the caller goes before its turn
        await within_passes(lambda: turns.waiting == 0 and bool(answers))
        assert answers == [None], "nobody to answer"
        assert decoded == [], "never decoded"
        assert admission.gate("m").in_flight == 0, "its place given back"

    run("uvloop", main)


class _RoutesEverything:
    """The part of the inference service that admission needs: every model is known."""

    class traffic:
        @staticmethod
        def route(name: str) -> None:
            return None
