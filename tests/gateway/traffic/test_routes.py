from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.traffic.routes import BUCKETS, Route, key_bucket


def route(**weights: float) -> Route:
    return Route(
        endpoint="fraud",
        variants=[{"name": n, "ref": f"fraud@{n}", "weight": w} for n, w in weights.items()],
    )


def owners(r: Route) -> list[str]:
    return [r.pick(b) for b in range(BUCKETS)]


def test_bucket_shares_follow_weights() -> None:
    table = owners(route(a=90, b=10))
    assert table.count("a") == 9000
    assert table.count("b") == 1000


def test_moving_weight_moves_only_the_keys_it_must() -> None:
    before = route(a=50, b=30, c=20)
    after = before.with_weights({"a": 40, "c": 30})
    old, new = owners(before), owners(after)
    moved = [(o, n) for o, n in zip(old, new, strict=True) if o != n]
    assert len(moved) == 1000  # exactly 10% of buckets changed hands
    assert set(moved) == {("a", "c")}  # b's keys did not move at all
    assert new.count("a") == 4000
    assert new.count("c") == 3000


def test_sticky_keys_are_stable_and_spread() -> None:
    assert key_bucket("user-42") == key_bucket("user-42")
    buckets = {key_bucket(f"user-{i}") for i in range(5000)}
    assert len(buckets) > 3500
    r = route(a=50, b=50)
    picks = [r.pick(key_bucket(f"user-{i}")) for i in range(10_000)]
    assert 4700 < picks.count("a") < 5300


def test_route_round_trips_through_json() -> None:
    r = route(a=70, b=30).with_weights({"a": 20, "b": 80})
    again = Route.model_validate_json(r.model_dump_json())
    assert owners(again) == owners(r)


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([{"name": "a", "ref": "m@a", "weight": 60}], "sum to 60"),
        (
            [{"name": "a", "ref": "m@a", "weight": 50}, {"name": "a", "ref": "m@b", "weight": 50}],
            "unique",
        ),
        ([{"name": "a", "ref": "bad:ref", "weight": 100}], "invalid model reference"),
    ],
)
def test_invalid_routes_say_why(variants: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Route(endpoint="m", variants=variants)


def test_canary_must_name_variants() -> None:
    with pytest.raises(ValidationError, match="canary variant 'x'"):
        Route(
            endpoint="m",
            variants=[{"name": "a", "ref": "m@a", "weight": 100}],
            canary={"variant": "x", "baseline": "a"},
        )


@pytest.mark.parametrize("field", ["interval_s", "window_s"])
def test_canary_times_are_bounded_to_a_week(field: str) -> None:
    variants = [
        {"name": "a", "ref": "m@a", "weight": 90},
        {"name": "b", "ref": "m@b", "weight": 10},
    ]
    canary = {"variant": "b", "baseline": "a", field: 604_800.0}
    assert Route(endpoint="m", variants=variants, canary=canary).canary is not None
    with pytest.raises(ValidationError, match=f"{field}[\\s\\S]*less than or equal to 604800"):
        Route(endpoint="m", variants=variants, canary={**canary, field: 1e12})


def test_a_canary_state_the_controller_cannot_read_is_refused() -> None:
    variants = [
        {"name": "a", "ref": "m@a", "weight": 90},
        {"name": "b", "ref": "m@b", "weight": 10},
    ]
    for state in ("pending", "step-0", "step-3", "promoted", "rolled_back"):
        canary = {"variant": "b", "baseline": "a", "state": state}
        assert Route(endpoint="m", variants=variants, canary=canary).canary is not None
    for state in ("bogus", "step-4", "step-x", "step-²", "step--1", "step-" + "9" * 27):
        canary = {"variant": "b", "baseline": "a", "state": state}
        with pytest.raises(ValidationError, match=r"canary\.state must be"):
            Route(endpoint="m", variants=variants, canary=canary)


def test_a_quality_gate_needs_a_monitor_url_that_can_be_fetched() -> None:
    variants = [
        {"name": "a", "ref": "m@a", "weight": 90},
        {"name": "b", "ref": "m@b", "weight": 10},
    ]
    good = {"variant": "b", "baseline": "a", "quality": {"monitor_url": "http://monitor:8090/"}}
    assert Route(endpoint="m", variants=variants, canary=good).canary is not None
    for url in ("http://[::1", "http://", "http://h:99999", "http://h:0"):
        canary = {**good, "quality": {"monitor_url": url}}
        with pytest.raises(ValidationError, match=r"quality\.monitor_url"):
            Route(endpoint="m", variants=variants, canary=canary)
