"""The canary controller's decisions, driven tick by tick on a fixed route and stats."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.traffic.canary import CanaryController, VariantStats
from gateway.traffic.routes import Route
from gateway.traffic.verdicts import Comparison


def gated_route(state: str, steps: list[int], candidate_weight: float) -> Route:
    return Route(
        endpoint="fraud",
        variants=[
            {"name": "base", "ref": "fraud@champion", "weight": 100 - candidate_weight},
            {"name": "cand", "ref": "fraud@candidate", "weight": candidate_weight},
        ],
        canary={
            "variant": "cand",
            "baseline": "base",
            "steps": steps,
            "interval_s": 1.0,
            "min_requests": 5,
            "quality": {"monitor_url": "http://monitor.invalid", "margin": 0.02},
            "state": state,
        },
    )


class Driven:
    """A controller over one route whose quality verdict the test sets."""

    def __init__(self, route: Route, verdict: Comparison | None) -> None:
        self.route = route
        self.changes: list[tuple[Route, str]] = []
        stats = VariantStats()
        for variant in ("base", "cand"):
            for _ in range(10):
                stats.record("fraud", variant, 0.001, False)
        self.controller = CanaryController(
            "fraud", self.route_of, stats, self.change, version_of=lambda e, v: "1"
        )

        async def quality(rule: Any) -> Comparison | None:
            return verdict

        self.controller._quality = quality  # type: ignore[method-assign]
        self.controller._last_step -= 2.0  # the step interval (1 s) has passed

    def route_of(self, endpoint: str) -> Route | None:
        return self.route

    async def change(self, route: Route, actor: str, reason: str) -> None:
        self.changes.append((route, reason))
        self.route = route


NOT_SHOWN = Comparison(difference=0.0, low=-0.05, high=0.05, worse=False, labels=200)
SHOWN = Comparison(difference=0.01, low=-0.005, high=0.03, worse=False, labels=2000)


@pytest.mark.parametrize("verdict", [None, NOT_SHOWN])
async def test_a_gated_canary_waits_before_all_traffic_until_quality_is_shown(
    verdict: Comparison | None,
) -> None:
    driven = Driven(gated_route("step-1", [10, 50, 100], 50), verdict)
    assert await driven.controller._tick() is False
    assert driven.changes == []  # held at 50%: no step to 100% without the verdict


async def test_a_gated_canary_ramps_below_full_traffic_without_a_verdict() -> None:
    driven = Driven(gated_route("step-0", [10, 50, 100], 10), None)
    assert await driven.controller._tick() is True
    route, reason = driven.changes[-1]
    assert reason == "ramped cand to 50%"
    assert {v.name: v.weight for v in route.variants} == {"base": 50, "cand": 50}


async def test_a_gated_canary_goes_to_full_traffic_then_promotes_once_shown() -> None:
    driven = Driven(gated_route("step-1", [10, 50, 100], 50), SHOWN)
    assert await driven.controller._tick() is True
    assert driven.changes[-1][1] == "ramped cand to 100%"
    driven.controller._last_step -= 2.0
    assert await driven.controller._tick() is True
    route, reason = driven.changes[-1]
    assert reason == "promoted cand"
    assert route.canary is not None
    assert route.canary.state == "promoted"


async def test_a_significantly_worse_challenger_is_rolled_back_at_any_step() -> None:
    worse = Comparison(difference=-0.2, low=-0.3, high=-0.1, worse=True, labels=500)
    driven = Driven(gated_route("step-0", [10, 50, 100], 10), worse)
    assert await driven.controller._tick() is True
    route, reason = driven.changes[-1]
    assert reason.startswith("rolled back cand")
    assert {v.name: v.weight for v in route.variants} == {"base": 100, "cand": 0}


async def test_a_canary_whose_version_refuses_what_the_baseline_serves_is_rolled_back() -> None:
    # A canary version whose inputs differ answers 400 to every request made for the baseline.
    # 400s are callers' mistakes to the error rate, so the ramp went on to promote it; callers'
    # mistakes fall on both variants alike, so a canary refusing more than the baseline is its
    # version. A canary refusing as often as the baseline (the callers) goes on.
    for canary_invalid, rolled_back in ((10, True), (1, False)):
        driven = Driven(gated_route("step-0", [10, 50, 100], 10), SHOWN)
        stats = VariantStats()
        for i in range(10):
            stats.record("fraud", "base", 0.001, False, invalid=i == 0)
            stats.record("fraud", "cand", 0.001, False, invalid=i < canary_invalid)
        driven.controller._stats = stats
        assert await driven.controller._tick() is True
        route, reason = driven.changes[-1]
        assert reason.startswith("rolled back cand") is rolled_back, reason
        if rolled_back:
            assert "invalid-request rate 1.000 vs baseline 0.100" in reason
            assert {v.name: v.weight for v in route.variants} == {"base": 100, "cand": 0}


async def test_a_new_ramp_is_not_judged_on_the_requests_of_an_earlier_one() -> None:
    # The stats are kept per variant name: a ramp started again on that variant (its version
    # fixed, or the rollout's next "candidate") was judged on the failures of the one rolled
    # back within the window, and rolled back before it served one request.
    route = gated_route("pending", [10, 50, 100], 0)
    assert route.canary is not None
    route = route.model_copy(update={"canary": route.canary.model_copy(update={"quality": None})})
    driven = Driven(route, None)
    stats = VariantStats()
    for _ in range(10):
        stats.record("fraud", "base", 0.001, False)
        stats.record("fraud", "cand", 0.001, True)  # the earlier ramp's version failed
    driven.controller._stats = stats
    assert await driven.controller._tick() is True
    route, reason = driven.changes[-1]
    assert reason == "canary started to 10%"
    # the step applied: a fresh controller judges the ramp, still without requests of its own
    following = CanaryController("fraud", driven.route_of, stats, driven.change)
    assert await following._tick() is False
    assert len(driven.changes) == 1
    assert stats.summary("fraud", "cand", 60.0).requests == 0
