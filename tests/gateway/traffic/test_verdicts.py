from __future__ import annotations

from typing import Any

import httpx

from gateway.traffic.verdicts import fetch_comparison


def _pair(**changes: Any) -> dict[str, Any]:
    pair = {
        "a": {"variant": "base", "version": "1"},
        "b": {"variant": "new", "version": "2"},
        "metric": "accuracy",
        "higher_is_better": True,
        "difference": 0.05,
        "low": 0.01,
        "high": 0.09,
        "decision": "b_better",
        "n_a": 500,
        "n_b": 400,
    }
    pair.update(changes)
    return pair


async def _compare(pair: dict[str, Any]) -> Any:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/ab/ep"
        return httpx.Response(200, json={"pairs": [pair]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        return await fetch_comparison(client, "http://monitor", "ep", ("base", "1"), ("new", "2"))


async def test_the_challengers_gain_is_positive_when_it_is_better_on_either_kind_of_metric() -> (
    None
):
    better = await _compare(_pair())
    assert (better.metric, better.difference, better.worse) == ("accuracy", 0.05, False)
    # a loss: the challenger's MAE is 0.05 higher, so its gain is -0.05 and it is worse
    worse = await _compare(_pair(metric="mae", higher_is_better=False, decision="a_better"))
    assert worse.metric == "mae"
    assert (worse.difference, worse.low, worse.high) == (-0.05, -0.09, -0.01)
    assert worse.worse is True


async def test_no_look_yet_or_an_error_gives_no_comparison() -> None:
    assert await _compare(_pair(low=None, high=None, decision="no_difference_yet")) is None
    assert await _compare(_pair(metric=None, error="primary metrics differ")) is None
