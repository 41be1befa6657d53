"""A canary whose owner goes quiet is taken over by exactly one other replica.

Replicas here are real ``Traffic`` objects (their models faked) joined by a bus that does what
the control topic and the route store do: it orders proposals, skips one made on a revision
that is no longer the route's, and applies the rest on every replica that is up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gateway.traffic import RevisionMismatchError
from gateway.traffic.canary import CanaryController, VariantStats
from gateway.traffic.router import Traffic
from gateway.traffic.routes import Route
from tests._support import wait_for

INTERVAL_S = 0.3
GRACE_S = 0.6


class Models:
    """The model manager, for routes whose models need no loading."""

    def __init__(self) -> None:
        self.deployments: dict[tuple[str, str], Any] = {}

    async def ensure(self, endpoint: str, name: str, ref: str, required: bool) -> None:
        pass

    def retire(self, endpoint: str, name: str) -> None:
        pass


async def no_shadow(route: Route, name: str) -> Any:
    raise AssertionError("no shadows here")


class ConflictError(RevisionMismatchError):
    """A change made on a revision that is no longer the route's (as the route store says)."""


@dataclass
class Applied:
    origin: str
    reason: str
    route: Route


class Bus:
    """The control topic and the route stores of several replicas, in one process."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.replicas: dict[str, Traffic] = {}
        self.up: set[str] = set()  # what they propose reaches the topic
        self.hearing: set[str] = set()  # they apply what is on it
        self.applied: list[Applied] = []
        self.conflicts: list[tuple[str, str]] = []
        self._queue: asyncio.Queue[tuple[Route, asyncio.Future[None]]] = asyncio.Queue()
        self._consumer = asyncio.create_task(self._consume())

    async def join(self, name: str) -> Traffic:
        traffic = Traffic(
            Models(),  # type: ignore[arg-type]
            no_shadow,
            VariantStats(),
            name,
            takeover_grace_s=GRACE_S,
            canary_check_interval_s=0.02,
        )

        async def change(route: Route, actor: str, reason: str) -> None:
            await self.propose(name, route, reason)

        traffic.change = change
        self.replicas[name] = traffic
        self.up.add(name)
        self.hearing.add(name)
        await traffic.apply(self.route, required=True)
        return traffic

    async def propose(self, origin: str, route: Route, reason: str) -> None:
        if origin not in self.up:
            return  # a replica cut off: nothing it says reaches the topic
        if route.revision != self.route.revision:
            self.conflicts.append((origin, reason))
            raise ConflictError(f"{reason}: made on {route.revision}, now {self.route.revision}")
        self.route = route.model_copy(update={"revision": route.revision + 1})
        self.applied.append(Applied(origin, reason, self.route))
        # applied in order by a task of its own, as the control topic's consumer applies them;
        # the proposer waits until it has (applying it here may end the proposer's own task)
        applied = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((self.route, applied))
        await applied

    async def _consume(self) -> None:
        while True:
            route, applied = await self._queue.get()
            for name in sorted(self.hearing):
                await self.replicas[name].apply(route, required=False)
            if not applied.done():
                applied.set_result(None)

    async def cut_off(self, name: str) -> None:
        """The replica stops hearing and being heard, and its ramp stops (killed, paused)."""
        self.up.discard(name)
        self.hearing.discard(name)
        controller = self.replicas[name]._canaries.pop("fraud", None)
        if controller is not None:
            await controller.stop()

    async def stop(self) -> None:
        self.up.clear()
        self.hearing.clear()
        self._consumer.cancel()
        await asyncio.gather(self._consumer, return_exceptions=True)
        for traffic in self.replicas.values():
            await traffic.__aexit__(None, None, None)

    def state(self) -> str:
        assert self.route.canary is not None
        return self.route.canary.state


def canary_route(owner: str) -> Route:
    return Route(
        endpoint="fraud",
        variants=[
            {"name": "base", "ref": "fraud@champion", "weight": 100},
            {"name": "cand", "ref": "fraud@candidate", "weight": 0},
        ],
        canary={
            "variant": "cand",
            "baseline": "base",
            "steps": [20, 50, 100],
            "interval_s": INTERVAL_S,
            "min_requests": 5,
            "state": "pending",
            "owner": owner,
        },
        revision=3,
    )


async def serve(bus: Bus) -> None:
    """Requests answered well by both variants on every replica that is up."""
    while True:
        for name in bus.up:
            for variant in ("base", "cand"):
                bus.replicas[name].stats.record("fraud", variant, 0.001, False)
        await asyncio.sleep(0.01)


async def test_another_replica_takes_over_a_ramp_whose_owner_is_gone_and_finishes_it() -> None:
    bus = Bus(canary_route(owner="a"))
    for name in ("a", "b"):
        await bus.join(name)
    load = asyncio.create_task(serve(bus))
    try:
        await wait_for(lambda: bus.state() == "step-0", 10)
        await bus.cut_off("a")  # its pod is deleted mid-ramp
        await wait_for(lambda: bus.state() == "promoted", 20)
    finally:
        load.cancel()
        await bus.stop()
    reasons = [(c.origin, c.reason) for c in bus.applied]
    assert reasons[0] == ("a", "canary started to 20%")
    assert reasons[1][0] == "b"
    assert reasons[1][1].startswith("took over the canary from a: no step or hold for ")
    assert reasons[2:] == [("b", "ramped cand to 50%"), ("b", "ramped cand to 100%"),
                           ("b", "promoted cand")]  # fmt: skip
    assert bus.route.canary is not None
    assert bus.route.canary.owner == "b"
    assert bus.route.canary.stepped_at is not None  # when it last moved, for operators to see


async def test_two_replicas_taking_over_at_once_make_one_owner() -> None:
    # Both see the owner silent past the grace on the same revision and propose themselves;
    # the revision check lets the first one through and skips the other.
    route = canary_route(owner="a").model_copy(update={"revision": 7})
    assert route.canary is not None
    route = route.with_weights(
        {"base": 80, "cand": 20}, canary={**route.canary.model_dump(), "state": "step-0"}
    ).model_copy(update={"revision": 7})
    current = {"route": route}
    changes: list[tuple[str, Route]] = []
    now = [100.0]

    def watcher(name: str) -> CanaryController:
        async def change(new: Route, actor: str, reason: str) -> None:
            await asyncio.sleep(0)  # both have read the route before either lands
            if new.revision != current["route"].revision:
                raise ConflictError(reason)
            current["route"] = new.model_copy(update={"revision": new.revision + 1})
            changes.append((name, current["route"]))

        return CanaryController(
            "fraud",
            lambda endpoint: current["route"],
            VariantStats(),
            change,
            replica_id=name,
            takeover_grace_s=GRACE_S,
            clock=lambda: now[0],
        )

    b, c = watcher("b"), watcher("c")
    assert list(await asyncio.gather(b._tick(), c._tick())) == [False, False]  # not yet due
    now[0] += INTERVAL_S + GRACE_S
    outcomes = await asyncio.gather(b._tick(), c._tick())
    assert sorted(outcomes) == [False, True]  # the second one's change was skipped: no error
    assert len(changes) == 1
    owner, taken = changes[0]
    assert taken.canary is not None
    assert taken.canary.owner == owner
    assert taken.canary.state == "step-0"  # the ramp stands where it stood
    assert taken.revision == 8


async def test_an_old_owner_that_comes_back_follows_the_new_one() -> None:
    bus = Bus(canary_route(owner="a"))
    for name in ("a", "b", "c"):
        await bus.join(name)
    load = asyncio.create_task(serve(bus))
    try:
        await wait_for(lambda: bus.state() == "step-0", 10)
        # a is paused (a long stall, a partition): its view of the route stops here
        await bus.cut_off("a")
        await wait_for(lambda: any(c.reason.startswith("took over") for c in bus.applied), 10)
        # a wakes up still believing it owns the ramp, with a step long due: it steps on the
        # revision it knows, which is no longer the route's, so the step is skipped
        a = bus.replicas["a"]
        bus.up.add("a")
        await a.apply(a.routes["fraud"], required=False)  # its ramp resumes where it was
        await wait_for(lambda: any(origin == "a" for origin, _ in bus.conflicts), 10)
        # then it reads the changes it missed: the route names the new owner
        bus.hearing.add("a")
        await a.apply(bus.route, required=False)
        await wait_for(lambda: bus.state() == "promoted", 20)
    finally:
        load.cancel()
        await bus.stop()
    taken = [c for c in bus.applied if c.reason.startswith("took over")]
    assert len(taken) == 1, [c.reason for c in bus.applied]  # b and c: one owner
    new_owner = taken[0].origin
    assert new_owner in ("b", "c")
    after = bus.applied[bus.applied.index(taken[0]) + 1 :]
    assert [c.origin for c in after] == [new_owner] * 3, [(c.origin, c.reason) for c in after]
    assert [c.reason for c in after][-1] == "promoted cand"


async def test_an_owner_waiting_for_requests_says_so_and_keeps_its_ramp() -> None:
    # No traffic: the owner cannot step, so each interval (plus half the grace) it holds,
    # saying why; the others hear it and do not take the ramp over.
    bus = Bus(canary_route(owner="a"))
    for name in ("a", "b"):
        await bus.join(name)
    try:
        await wait_for(lambda: sum(c.reason.startswith("held") for c in bus.applied) >= 3, 20)
    finally:
        await bus.stop()
    assert {c.origin for c in bus.applied} == {"a"}
    held = [c for c in bus.applied if c.reason.startswith("held")]
    assert held[0].reason == "held cand at 20%: 0 of 5 requests in the last 60 s"
    assert held[0].route.canary is not None
    assert held[0].route.canary.held == "0 of 5 requests in the last 60 s"
    assert held[0].route.canary.state == "step-0"
    assert bus.conflicts == []
