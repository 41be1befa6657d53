"""``roll_out`` against a real gateway process under traffic: a candidate promoted through the
canary (and resumed after its driver died mid-ramp), one rolled back by the canary for its
errors, one that cannot load, and one whose canary outlives the rollout's timeout."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from monitors.retrain.rollout import RolloutError, RolloutOutcome, RolloutSettings, roll_out
from registry_client import LocalRegistry, ModelMetadata
from registry_client.mlflow import MlflowRegistry
from tests._models import failing_model
from tests._support import GatewayProcess, free_port, start_gateway

pytestmark = pytest.mark.e2e

X = load_breast_cancer().data.astype(np.float32)
TOKEN = "retrain-token"
MODEL = "breast_cancer"


def gateway_config(registry: Path, tmp_path: Path) -> dict[str, Any]:
    return {
        # a short poll, so the champion variant follows the alias soon after promotion
        "registry": {"backend": "local", "root": str(registry), "poll_interval_s": 0.5},
        "routes": [{"endpoint": MODEL, "variants": [
            {"name": "champion", "ref": f"{MODEL}@champion", "weight": 100}]}],
        "admin": {"tokens": {"retrain": TOKEN}, "audit_log": str(tmp_path / "audit.jsonl")},
    }  # fmt: skip


def settings(gw: GatewayProcess, **changes: Any) -> RolloutSettings:
    base: dict[str, Any] = {
        "admin_url": gw.url, "admin_token": TOKEN, "steps": (20, 50, 100), "interval_s": 1.0,
        "window_s": 3.0, "min_requests": 15, "max_error_rate_increase": 0.05,
        # promotion is what these tests check; on a busy machine two equal variants' p99s
        # differ by milliseconds (the gateway's own canary tests bound p99 apart)
        "max_p99_ratio": 3.0, "min_p99_increase_s": 0.1,
        "timeout_s": 120.0, "poll_interval_s": 0.2,
    }  # fmt: skip
    return RolloutSettings(**{**base, **changes})


class Load:
    """Requests at a steady pace from a thread: (status, variant, version) of each."""

    def __init__(self, target: str, rate: float = 100.0) -> None:
        self.target = target
        self.interval = 1 / rate
        self.results: list[tuple[int, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            next_at = time.perf_counter()
            while not self._stop.is_set():
                row = X[i % len(X)].tolist()
                body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                    "data": row}]}  # fmt: skip
                response = client.post(self.target, json=body)
                version = response.json().get("model_version", "") if response.is_success else ""
                variant = response.headers.get("x-model-variant", "")
                self.results.append((response.status_code, variant, version))
                i += 1
                next_at += self.interval
                self._stop.wait(max(0.0, next_at - time.perf_counter()))


async def register(registry: LocalRegistry, model: bytes, tmp_path: Path) -> str:
    path = tmp_path / f"candidate-{len(registry.versions(MODEL))}.onnx"
    path.write_bytes(model)
    metadata = ModelMetadata.load(registry.root / MODEL / "1")
    return await registry.register_version(MODEL, path, metadata.model_copy(
        update={"model_sha256": None}), {"report.json": b'{"accuracy": 0.95}'})  # fmt: skip


def admin(gw: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {TOKEN}"})


def restored(gw: GatewayProcess) -> dict[str, Any]:
    with admin(gw) as client:
        route: dict[str, Any] = client.get(f"/admin/routes/{MODEL}").json()
    return route


async def test_promotion_resumed_after_the_driver_died_then_the_champion_serves(
    demo_registry: Path, tmp_path: Path
) -> None:
    registry = LocalRegistry(demo_registry)
    candidate = await register(registry, (demo_registry / MODEL / "2" / "model.onnx").read_bytes(),
                               tmp_path)  # fmt: skip
    with (
        start_gateway(tmp_path, gateway_config(demo_registry, tmp_path)) as gw,
        Load(f"{gw.url}/v2/models/{MODEL}/infer") as load,
    ):
        heard: list[str] = []
        stepped = asyncio.Event()

        def first_driver(kind: str, entry: dict[str, Any]) -> None:
            heard.append(kind)
            if kind == "step":
                stepped.set()

        # the first driver dies (its task is cancelled) once the ramp has taken a step
        task = asyncio.create_task(roll_out(
            registry, settings(gw), model=MODEL, endpoint=MODEL, champion="1",
            candidate=candidate, on_event=first_driver))  # fmt: skip
        await asyncio.wait_for(stepped.wait(), 120)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert heard[:3] == ["candidate_alias", "canary_started", "step"], heard
        assert await registry.get_aliases(MODEL) == {
            "champion": "1",
            "challenger": "2",
            "candidate": candidate,
        }

        events: list[tuple[str, dict[str, Any]]] = []
        outcome = await roll_out(
            registry, settings(gw), model=MODEL, endpoint=MODEL, champion="1",
            candidate=candidate, on_event=lambda kind, entry: events.append((kind, entry)))  # fmt: skip
        after_promotion = len(load.results)
        deadline = time.monotonic() + 60
        while len(load.results) < after_promotion + 50:
            assert time.monotonic() < deadline, "the load stopped"
            await asyncio.sleep(0.05)
        route = restored(gw)
        # called again (a worker restarted after it finished), it changes nothing
        again = await roll_out(registry, settings(gw), model=MODEL, endpoint=MODEL,
                               champion="1", candidate=candidate)  # fmt: skip
        assert restored(gw)["revision"] == route["revision"]

    assert outcome.state == "promoted", outcome
    assert outcome.reason == "promoted candidate"
    kinds = [kind for kind, _ in events]
    # the second driver takes the canary where it stands: the steps so far from the gateway's
    # history, then its own watch; the canary was started once
    assert kinds[:3] == ["canary_started", "step", "resumed"], kinds
    assert kinds.count("canary_started") == 1
    assert kinds[-4:] == ["promoted", "champion_alias", "champion_serving", "route_restored"]
    assert kinds == [e["event"] for e in outcome.timeline]
    steps = [e["percent"] for e in outcome.timeline if e["event"] in ("step", "promoted")]
    assert steps[-2:] == [100, 100], outcome.timeline
    assert steps == sorted(steps), outcome.timeline
    times = [e["time"] for e in outcome.timeline]
    assert times == sorted(times)
    assert (await registry.get_aliases(MODEL))["champion"] == candidate
    assert [(v["name"], v["weight"]) for v in route["variants"]] == [("champion", 100)]
    assert route["canary"] is None
    # traffic was served throughout, and after the rollout the champion variant serves the
    # new version (the route as it began: one variant, no canary)
    assert {status for status, _, _ in load.results} == {200}
    tail = load.results[after_promotion + 1 :]  # the one request in flight may predate it
    assert {(variant, version) for _, variant, version in tail} == {("champion", candidate)}
    assert again.state == "promoted"
    assert again.reason == f"version {candidate} is already {MODEL}@champion"


async def test_failing_candidate_rolled_back_by_the_canary_and_one_that_cannot_load(
    demo_registry: Path, tmp_path: Path
) -> None:
    registry = LocalRegistry(demo_registry)
    broken = await register(registry, b"not an onnx model", tmp_path)
    failing = await register(registry, failing_model().SerializeToString(), tmp_path)
    with start_gateway(tmp_path, gateway_config(demo_registry, tmp_path)) as gw:
        with pytest.raises(RolloutError, match="refused the rollout's admin token"):
            await roll_out(registry, settings(gw, admin_token="wrong"), model=MODEL,
                           endpoint=MODEL, champion="1", candidate=broken)  # fmt: skip
        with pytest.raises(RolloutError, match="not the champion 2"):
            await roll_out(registry, settings(gw), model=MODEL, endpoint=MODEL, champion="2",
                           candidate=broken)  # fmt: skip

        unloadable = await roll_out(
            registry, settings(gw), model=MODEL, endpoint=MODEL, champion="1", candidate=broken
        )
        assert unloadable.state == "rolled_back"
        assert unloadable.reason.startswith(f"the gateway could not load {MODEL}/{broken}")
        assert restored(gw)["revision"] == 0  # nothing changed

        with Load(f"{gw.url}/v2/models/{MODEL}/infer") as load:
            outcome = await roll_out(registry, settings(gw), model=MODEL, endpoint=MODEL,
                                     champion="1", candidate=failing)  # fmt: skip
        route = restored(gw)
        # asked again after it finished: the same verdict, no new canary
        again = await roll_out(registry, settings(gw), model=MODEL, endpoint=MODEL,
                               champion="1", candidate=failing)  # fmt: skip
        assert restored(gw)["revision"] == route["revision"]

    assert outcome.state == "rolled_back", outcome
    assert outcome.reason.startswith("rolled back candidate: error rate"), outcome.reason
    assert [e["event"] for e in outcome.timeline][-2:] == ["rolled_back", "route_restored"]
    assert (again.state, again.reason) == (outcome.state, outcome.reason)
    assert [(v["name"], v["weight"]) for v in route["variants"]] == [("champion", 100)]
    assert route["canary"] is None
    aliases = await registry.get_aliases(MODEL)
    assert (aliases["champion"], aliases["candidate"]) == ("1", failing)
    champion = [status for status, variant, _ in load.results if variant == "champion"]
    assert champion, "the champion kept taking traffic"
    assert set(champion) == {200}, "and served it"


async def test_a_canary_that_outlives_the_timeout_is_rolled_back_explicitly(
    demo_registry: Path, tmp_path: Path
) -> None:
    registry = LocalRegistry(demo_registry)
    candidate = await register(registry, (demo_registry / MODEL / "1" / "model.onnx").read_bytes(),
                               tmp_path)  # fmt: skip
    # the quality gate asks a monitor that is not there: the canary can never be promoted
    with start_gateway(tmp_path, gateway_config(demo_registry, tmp_path)) as gw:
        rule = settings(gw, timeout_s=6.0,
                        quality_monitor_url=f"http://127.0.0.1:{free_port()}")  # fmt: skip
        started = time.monotonic()
        with Load(f"{gw.url}/v2/models/{MODEL}/infer"):
            outcome: RolloutOutcome = await roll_out(
                registry, rule, model=MODEL, endpoint=MODEL, champion="1", candidate=candidate
            )
        took = time.monotonic() - started
        route = restored(gw)
        again = await roll_out(registry, rule, model=MODEL, endpoint=MODEL, champion="1",
                               candidate=candidate)  # fmt: skip
        assert restored(gw)["revision"] == route["revision"]  # no second canary
    assert again.state == "rolled_back"
    assert again.reason.startswith(f"the canary of {MODEL}/{candidate} was stopped at step-")
    assert again.reason.endswith(" by retrain (the rollout's timeout or an operator)")
    assert outcome.state == "rolled_back", outcome
    assert outcome.reason.startswith("the canary did not finish within 6 s"), outcome.reason
    assert 6 <= took < 60
    assert [(v["name"], v["weight"]) for v in route["variants"]] == [("champion", 100)]
    assert route["canary"] is None
    assert (await registry.get_aliases(MODEL))["champion"] == "1"


async def test_promotion_with_the_mlflow_registry(
    mlflow_url: str, demo_registry: Path, tmp_path: Path
) -> None:
    """The same loop on MLflow: versions registered and aliases moved over its REST API, the
    gateway following them from the same server."""
    name = f"rollout-{uuid.uuid4().hex[:8]}"
    registry = MlflowRegistry(mlflow_url, tmp_path / "worker-cache")
    metadata = ModelMetadata.load(demo_registry / MODEL / "1").model_copy(
        update={"model_sha256": None}
    )
    try:
        champion = await registry.register_version(
            name, demo_registry / MODEL / "1" / "model.onnx", metadata
        )
        await registry.set_alias(name, "champion", champion)
        candidate = await registry.register_version(
            name, demo_registry / MODEL / "2" / "model.onnx", metadata
        )
        config = {
            "registry": {"backend": "mlflow", "mlflow_url": mlflow_url,
                         "cache_dir": str(tmp_path / "gateway-cache"), "poll_interval_s": 0.5},
            "routes": [{"endpoint": MODEL, "variants": [
                {"name": "champion", "ref": f"{name}@champion", "weight": 100}]}],
            "admin": {"tokens": {"retrain": TOKEN}, "audit_log": str(tmp_path / "audit.jsonl")},
        }  # fmt: skip
        with (
            start_gateway(tmp_path, config) as gw,
            Load(f"{gw.url}/v2/models/{MODEL}/infer") as load,
        ):
            outcome = await roll_out(registry, settings(gw), model=name, endpoint=MODEL,
                                     champion=champion, candidate=candidate)  # fmt: skip
            served = len(load.results)
            deadline = time.monotonic() + 60
            while len(load.results) < served + 20:
                assert time.monotonic() < deadline, "the load stopped"
                await asyncio.sleep(0.05)
            route = restored(gw)
        aliases = await registry.get_aliases(name)
    finally:
        await registry.aclose()
    assert outcome.state == "promoted", outcome
    assert aliases == {"champion": candidate, "candidate": candidate}
    assert [(v["name"], v["weight"]) for v in route["variants"]] == [("champion", 100)]
    assert {status for status, _, _ in load.results} == {200}
    # skip the one request that may have been in flight when the route was restored
    tail = {(variant, version) for _, variant, version in load.results[served + 1 :]}
    assert tail == {("champion", candidate)}


def test_settings_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"steps \[50, 20\] must be increasing"):
        RolloutSettings(admin_url="http://gw", admin_token="t", steps=(50, 20))
    with pytest.raises(ValueError, match="admin_url 'gw:8080' must start with http"):
        RolloutSettings(admin_url="gw:8080", admin_token="t")
    with pytest.raises(ValueError, match="admin_token is empty; timeout_s must be positive"):
        RolloutSettings(admin_url="http://gw", admin_token="", timeout_s=0)
    assert "t0ken" not in repr(RolloutSettings(admin_url="http://gw", admin_token="t0ken"))
    rule = RolloutSettings(admin_url="http://gw", admin_token="t",
                           quality_monitor_url="http://monitor:8090").canary_rule("champion")  # fmt: skip
    assert rule["quality"] == {"monitor_url": "http://monitor:8090", "margin": 0.01}
    assert (rule["variant"], rule["baseline"], rule["steps"]) == ("candidate", "champion",
                                                                 [5, 25, 50, 100])  # fmt: skip
