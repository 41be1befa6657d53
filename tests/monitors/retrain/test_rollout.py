"""``roll_out`` against a fake gateway admin API: answers of the wrong shape are RolloutErrors
naming what was wrong (the canary's course is tested on a real gateway in
tests/integration/test_rollout.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitors.retrain.rollout import RolloutError, RolloutSettings, roll_out
from registry_client import LocalRegistry

# A route whose canary of m/2 the gateway has promoted: the rollout moves the champion alias,
# waits for the champion variant to serve version 2 (/metrics), then restores the route.
PROMOTED: dict[str, Any] = {
    "endpoint": "ep", "revision": 4, "shadows": [], "allow_pinning": False,
    "variants": [{"name": "champion", "ref": "m@champion", "weight": 50},
                 {"name": "candidate", "ref": "m/2", "weight": 50}],
    "canary": {"variant": "candidate", "baseline": "champion", "state": "promoted",
               "steps": [50, 100]},
}  # fmt: skip
RESTORED: dict[str, Any] = {
    "endpoint": "ep", "revision": 5, "shadows": [], "allow_pinning": False,
    "variants": [{"name": "champion", "ref": "m@champion", "weight": 100}], "canary": None,
}  # fmt: skip
LOADED = 'gateway_model_loaded{model="ep",variant="champion",version="2"} 1.0\n'


def registry(root: Path) -> LocalRegistry:
    """Versions 1 (champion) and 2 (candidate) of model m."""
    for version in ("1", "2"):
        (root / "m" / version).mkdir(parents=True)
        (root / "m" / version / "model.onnx").write_bytes(b"")
    (root / "m" / "aliases.json").write_text(json.dumps({"champion": "1", "candidate": "2"}))
    return LocalRegistry(root)


def gateway(wrong: dict[str, httpx.Response]) -> httpx.MockTransport:
    """The admin API of a gateway that promoted the canary; ``wrong`` ('METHOD /path' -> answer)
    replaces its answers."""
    normal = {
        "GET /admin/routes/ep": httpx.Response(200, json=PROMOTED),
        "GET /admin/history": httpx.Response(200, json={"changes": []}),
        "PUT /admin/routes/ep": httpx.Response(200, json={"before": PROMOTED, "after": RESTORED}),
        "GET /metrics": httpx.Response(200, text=LOADED),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        key = f"{request.method} {request.url.path}"
        return {**normal, **wrong}.get(key) or httpx.Response(404, json={"error": key})

    return httpx.MockTransport(answer)


async def run(root: Path, wrong: dict[str, httpx.Response]) -> str:
    settings = RolloutSettings(admin_url="http://gateway.test", admin_token="t", timeout_s=30,
                               swap_timeout_s=30, poll_interval_s=0.01)  # fmt: skip
    outcome = await roll_out(
        registry(root), settings, model="m", endpoint="ep", champion="1", candidate="2",
        transport=gateway(wrong),
    )  # fmt: skip
    return outcome.state


async def test_the_fake_gateway_promotes(tmp_path: Path) -> None:
    assert await run(tmp_path, {}) == "promoted"


def without(route: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in route.items() if k != key}


def ok(body: object) -> httpx.Response:
    return httpx.Response(200, json=body)


ROUTE = "GET /admin/routes/ep"
HISTORY = "GET /admin/history"


@pytest.mark.parametrize(
    ("where", "answer", "error"),
    [
        (ROUTE, ok([PROMOTED]), r"route 'ep': the gateway's answer \(200\) is not a JSON object"),
        (ROUTE, httpx.Response(200, text="<html>gateway</html>"),
         r"route 'ep': the gateway's answer \(200\) is not JSON: '<html>gateway</html>'"),
        (ROUTE, ok(without(PROMOTED, "revision")), "has no int 'revision'"),
        (ROUTE, ok(without(PROMOTED, "variants")), "has no list 'variants'"),
        (ROUTE, ok({**PROMOTED, "variants": [{"name": "champion", "weight": 100}]}),
         r"has variants\[0\] without str 'ref'"),
        (ROUTE, ok({**PROMOTED, "variants": ["champion"]}),
         r"has variants\[0\] that is not an object"),
        (ROUTE, ok({**PROMOTED, "canary": without(PROMOTED["canary"], "state")}),
         "has a 'canary' without str 'state'"),
        (ROUTE, ok({**PROMOTED, "canary": "promoted"}), "has a 'canary' that is not an object"),
        (HISTORY, ok({}), r"history of 'ep': .* has no list of objects 'changes'"),
        (HISTORY, ok({"changes": [{"time": 1.0, "after": []}]}),
         r"changes\[0\] 'after' is not a JSON object"),
        (HISTORY, ok({"changes": [{"after": PROMOTED}]}), r"changes\[0\] has no number 'time'"),
        ("PUT /admin/routes/ep", ok({"before": PROMOTED}),
         r"removing m/2 from route 'ep': the gateway's answer \(200\) has no object 'after'"),
        ("GET /metrics", httpx.Response(200, text="<html>gateway</html>"),
         r"the gateway's metrics: the gateway's answer \(200\) is not Prometheus text"),
    ],
)  # fmt: skip
async def test_answers_of_the_wrong_shape_are_rollout_errors(
    tmp_path: Path, where: str, answer: httpx.Response, error: str
) -> None:
    # each raised a bare KeyError, TypeError, AttributeError or ValueError before, which the
    # worker (it catches RolloutError and fails the job with its message) did not expect
    with pytest.raises(RolloutError, match=error):
        await run(tmp_path, {where: answer})
