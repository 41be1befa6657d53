"""End-to-end: gateway -> embedded broker -> monitor (drift and ground truth) -> a real webhook
receiver, with labels sent through the feedback API.

A 50/50 split of two versions of known, different accuracy; labels sent late, in bulk, out of
order, some never: the monitor's realized accuracy per variant equals a direct computation and
its A/B verdict names the better variant. Adverse labels on one variant fire one signed
performance.degraded event. A canary gated on the verdict promotes the better version and
rolls back the worse.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

from gateway.demo import validation_report
from gateway.feedback_client import send_feedback
from monitors.broker import EmbeddedBroker
from registry_client import LocalRegistry, ModelMetadata
from tests._support import free_port, start_gateway, start_monitor
from tests.monitors.test_monitor_e2e import SECRET, Receiver

pytestmark = pytest.mark.e2e

DATA = load_breast_cancer()
X = DATA.data.astype(np.float32)
Y = DATA.target
ADMIN_TOKEN = "t0ken"


def register_weak_version(root: Path) -> str:
    """A decision stump on one weak feature (mean texture): far less accurate than the demo's."""
    x_train, x_test, y_train, y_test = train_test_split(
        X, Y, test_size=0.25, random_state=0, stratify=Y
    )
    only = np.zeros_like(x_train)
    only[:, 1] = x_train[:, 1]
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(only, y_train)
    registry = LocalRegistry(root)
    metadata = ModelMetadata.load(root / "breast_cancer" / "1").model_copy(
        update={"validation": validation_report(y_test, stump.predict_proba(x_test))}
    )
    onnx_model = to_onnx(
        stump,
        initial_types=[("input", FloatTensorType([None, 30]))],
        options={id(stump): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weak.onnx"
        path.write_bytes(onnx_model.SerializeToString())
        version = registry.register("breast_cancer", path, metadata)
    registry.set_alias_sync("breast_cancer", "weak", version)
    return version


def route(variants: list[tuple[str, str, float]], **extra: Any) -> dict[str, Any]:
    return {
        "endpoint": "breast_cancer",
        "variants": [{"name": n, "ref": f"breast_cancer@{a}", "weight": w} for n, a, w in variants],
        "allow_pinning": True,
        **extra,
    }


async def predict(
    url: str, count: int, seed: int, pin: str | None = None
) -> list[tuple[str, str, str, int, int]]:
    """``count`` single-row requests: (request id, variant, version, predicted, true label)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(X), size=count)
    out: list[tuple[str, str, str, int, int]] = []
    headers = {"x-model-variant": pin} if pin else {}
    async with httpx.AsyncClient(timeout=30) as client:
        queue = list(rows)

        async def worker() -> None:
            while queue:
                i = int(queue.pop())
                body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                    "data": X[i].tolist()}]}  # fmt: skip
                response = await client.post(
                    f"{url}/v2/models/breast_cancer/infer", json=body, headers=headers
                )
                assert response.status_code == 200, response.text
                label = response.json()["outputs"][0]["data"][0]
                out.append(
                    (response.headers["x-request-id"], response.headers["x-model-variant"],
                     response.headers["x-model-version"], int(label), int(Y[i]))
                )  # fmt: skip

        await asyncio.gather(*(worker() for _ in range(8)))
    return out


def label_items(served: list[tuple[str, str, str, int, int]], flip: bool = False) -> list[Any]:
    return [{"id": rid, "label": (1 - y) if flip else y} for rid, _, _, _, y in served]


def performance(monitor_url: str) -> dict[str, Any]:
    response = httpx.get(f"{monitor_url}/performance", timeout=10)
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def wait_until(
    what: str,
    check: Callable[[], Any],
    timeout_s: float = 120.0,
    tick: Callable[[], None] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


def run_canaries(admin: httpx.Client, url: str, mon: str) -> None:
    """A canary gated on accuracy: the better version is promoted, the worse rolled back."""
    rule = {"steps": [50], "interval_s": 1, "min_requests": 20,
            # latency and errors out of the way (a shared machine's p99 moves): quality only
            "max_p99_ratio": 1000, "min_p99_increase_s": 10,
            "quality": {"monitor_url": mon, "margin": 0.02}}  # fmt: skip

    def run_canary(baseline: str, candidate: str, until: str) -> dict[str, Any]:
        body = route([("base", baseline, 100), ("cand", candidate, 0)],
                     canary={"variant": "cand", "baseline": "base", **rule})  # fmt: skip
        assert admin.put("/admin/routes/breast_cancer", json=body).status_code == 200

        def feed() -> None:
            batch = asyncio.run(predict(url, 100, seed=random.randrange(10**6)))
            send_feedback(url, "breast_cancer", label_items(batch))

        def state() -> dict[str, Any] | None:
            current = admin.get("/admin/routes/breast_cancer").json()
            return current if current["canary"]["state"] in ("promoted", "rolled_back") else None

        final: dict[str, Any] = wait_until(f"canary {until}", state, 180, tick=feed)
        assert final["canary"]["state"] == until, admin.get("/admin/history").json()["changes"][-3:]
        return final

    promoted = run_canary("weak", "champion", "promoted")
    pairs = httpx.get(f"{mon}/ab/breast_cancer", timeout=10).json()["pairs"]
    gate = next(p for p in pairs if (p["a"]["version"], p["b"]["version"]) == ("3", "1"))
    assert gate["low"] > -0.02  # promoted on the verdict: cand (1) not worse than base (3)
    assert {v["name"]: v["weight"] for v in promoted["variants"]} == {
        "base": 50,
        "cand": 50,
    }
    rolled_back = run_canary("champion", "weak", "rolled_back")
    assert {v["name"]: v["weight"] for v in rolled_back["variants"]} == {
        "base": 100,
        "cand": 0,
    }
    reasons = [
        c["reason"] for c in admin.get("/admin/history").json()["changes"] if c["actor"] == "canary"
    ]
    assert "significantly worse" in reasons[-1]


def test_labels_realized_accuracy_ab_verdict_degradation_and_a_gated_canary(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    weak = register_weak_version(demo_registry)
    monitor_port = free_port()
    config = {
        "registry": {"root": str(demo_registry), "poll_interval_s": 60},
        "feature_log": {"enabled": True, "bootstrap_servers": broker.bootstrap_servers,
                        "spool_dir": str(tmp_path / "spool"), "linger_s": 0.005},
        "feedback": {"enabled": True, "spool_dir": str(tmp_path / "feedback-spool")},
        "admin": {"tokens": {"ops": ADMIN_TOKEN}, "audit_log": str(tmp_path / "audit.jsonl")},
        "routes": [route([("lr", "champion", 50), ("weak", "weak", 50)])],
    }  # fmt: skip
    with Receiver(fail_first=1) as receiver:
        monitor_config = {
            "kafka": {"bootstrap_servers": broker.bootstrap_servers, "max_batch_records": 500},
            "registry_root": str(demo_registry),
            "state_dir": str(tmp_path / "monitor-state"),
            "webhooks": [{"name": "retrain", "url": receiver.url, "secret": SECRET}],
            "webhook_backoff_s": 0.1,
            "window": {"by": "count", "size": 10**7, "slide": 10**7},  # no drift windows here
            "http": {"host": "127.0.0.1", "port": monitor_port},
            "performance": {
                "enabled": True,
                "window": {"by": "prediction", "size_s": 2.0, "settle_s": 2.0},
                "horizon_s": 3600, "label_wait_s": 600, "min_labels": 20, "margin": 0.05,
                "consecutive": 2, "cooldown_windows": 1000,
                "ab": {"min_samples": 50},
            },
        }  # fmt: skip
        with (
            start_gateway(tmp_path, config) as gw,
            start_monitor(tmp_path, monitor_config) as (_, mon),
        ):
            # -- a 50/50 split, labels late, in bulk, shuffled, 10% never sent -----------------
            served = asyncio.run(predict(gw.url, 600, seed=1))
            assert {v for _, v, _, _, _ in served} == {"lr", "weak"}
            rng = random.Random(2)
            labelled = [s for s in served if rng.random() < 0.9]
            rng.shuffle(labelled)
            third = len(labelled) // 3
            for part in (labelled[:third], labelled[third : 2 * third], labelled[2 * third :]):
                time.sleep(0.5)
                assert send_feedback(
                    gw.url, "breast_cancer", label_items(part), batch_size=150
                ) == len(part)

            def tick() -> None:  # labelled traffic moves both clocks on: windows close
                more = asyncio.run(predict(gw.url, 10, seed=3))
                send_feedback(gw.url, "breast_cancer", label_items(more))

            def direct(variant: str) -> tuple[int, float]:
                mine = [s for s in labelled if s[1] == variant]
                return len(mine), sum(p == y for _, _, _, p, y in mine) / len(mine)

            def totals_match() -> bool:
                streams = performance(mon)["streams"]
                got = {
                    s["variant"]: (s["totals"]["labels"], s["totals"]["accuracy"])
                    for s in streams.values() if s["variant"] in ("lr", "weak")
                }  # fmt: skip
                return got == {"lr": direct("lr"), "weak": direct("weak")}

            wait_until(
                "realized accuracy per variant equal to the direct computation", totals_match
            )
            assert direct("lr")[1] > direct("weak")[1] + 0.1

            def verdict() -> dict[str, Any] | None:
                pairs = httpx.get(f"{mon}/ab/breast_cancer", timeout=10).json()["pairs"]
                return next((p for p in pairs if p["decision"] != "no_difference_yet"), None)

            decided = wait_until("an A/B decision", verdict, tick=tick)
            assert decided["a"]["variant"] == "lr"
            assert decided["decision"] == "a_better"
            assert decided["high"] < 0
            status = performance(mon)
            assert status["join"]["labels_joined"] >= len(labelled)
            lr_window = next(s for s in status["streams"].values() if s["variant"] == "lr")
            window = lr_window["latest_window"]
            assert set(window["realized"]) >= {
                "accuracy",
                "macro_f1",
                "roc_auc",
                "log_loss",
                "confusion",
            }
            assert "accuracy" in window["estimated"]
            metrics = httpx.get(f"{mon}/metrics", timeout=10).text
            assert (
                'monitor_ab_decision{a="lr/1",b="weak/3",decision="a_better",model="breast_cancer"} 1.0'
                in metrics
            )
            assert receiver.requests == []  # labels agree with validation: nothing degraded

            # -- labels turn adverse on one variant: one degradation event ---------------------
            for seed in (10, 11, 12):
                adverse = asyncio.run(predict(gw.url, 80, seed=seed, pin="lr"))
                send_feedback(gw.url, "breast_cancer", label_items(adverse, flip=True))
                time.sleep(1.0)
            wait_until("a delivered degradation event",
                       lambda: any(s == 200 for _, _, s in receiver.requests), tick=tick)  # fmt: skip
            for _ in range(4):  # more adverse windows close: still the one event (cooldown)
                tick()
                time.sleep(0.5)
            events = [json.loads(body) for _, body, _ in receiver.requests]
            assert {e["id"] for e in events} == {events[0]["id"]}  # one event, retried once
            headers, body, _ = receiver.requests[-1]
            event = json.loads(body)
            assert event["type"] == "io.model-gateway.performance.degraded"
            assert (event["data"]["variant"], event["data"]["metric"]) == ("lr", "accuracy")
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["x-signature-256"] == expected

            # -- a canary gated on accuracy: the better version promoted, the worse not ------
            auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
            with httpx.Client(base_url=gw.url, headers=auth, timeout=30) as admin:
                run_canaries(admin, gw.url, mon)
    assert weak == "3"
