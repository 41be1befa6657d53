"""A route change that one replica cannot load: the load-first rule, on the replicas that apply
it from the control topic.

The proposer loads every model of a change before it publishes it; a replica that reads the
change and cannot load a model there (the version is not in its registry yet, a registry flake,
no memory) keeps serving what the variant served, shows the refused reference, and takes it up
once it loads. Two in-process gateways over the real core, each with a registry of its own,
share a signed control topic on the embedded broker.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from monitors.broker import EmbeddedBroker
from tests._support import wait_for
from tests.gateway.serving.test_deployments import BODY, INFER
from tests.gateway.test_admin import AB, CHALLENGER, CHAMPION, ROUTE, Gateway, control, gateway

MODEL = "/v2/models/breast_cancer"
PINNABLE = {**AB, "allow_pinning": True}


@asynccontextmanager
async def replica(registry: Path, name: str, bootstrap: str) -> AsyncIterator[Gateway]:
    audit = registry.parent / f"{name}.jsonl"
    async with gateway(
        registry, audit, [PINNABLE], poll_interval_s=0.05, **control(bootstrap, name)
    ) as replica:
        yield replica


def two_registries(demo_registry: Path) -> tuple[Path, Path]:
    """The proposer's registry with a version 3 (version 1's files), and the follower's
    without it (as on a node whose copy of the artifacts is behind)."""
    follower = demo_registry.parent / "follower-registry"
    shutil.copytree(demo_registry, follower)
    add_version_3(demo_registry)
    return demo_registry, follower


def add_version_3(registry: Path) -> None:
    model = registry / "breast_cancer"
    shutil.copytree(model / "1", model / ".3")
    (model / ".3").rename(model / "3")  # whole, as a registry writes it


async def answers(gw: Gateway, n: int = 40, **headers: str) -> Counter[tuple[int, str, str]]:
    """(status, variant, version) of ``n`` requests."""
    seen: Counter[tuple[int, str, str]] = Counter()
    for _ in range(n):
        answer = await gw.client.post(INFER, json=BODY, headers=headers)
        version = answer.json().get("model_version", "") if answer.status_code == 200 else ""
        seen[answer.status_code, answer.headers.get("x-model-variant", ""), version] += 1
    return seen


async def not_taken_up(gw: Gateway) -> list[dict[str, Any]]:
    answer = await gw.client.get(MODEL)
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, Any]] = answer.json()["parameters"]["not_taken_up"]
    return entries


def refused_gauge(gw: Gateway, variant: str, ref: str) -> float | None:
    labels = {"model": "breast_cancer", "version": "3", "variant": variant, "ref": ref}
    return gw.metrics.get_sample_value("gateway_model_not_taken_up", labels)


def loaded(gw: Gateway, variant: str, version: str, ref: str) -> bool:
    labels = {"model": "breast_cancer", "version": version, "variant": variant, "ref": ref}
    return gw.metrics.get_sample_value("gateway_model_loaded", labels) == 1.0


def shadow_copies(gw: Gateway, outcome: str) -> float:
    return sum(
        sample.value
        for metric in gw.metrics.collect()
        for sample in metric.samples
        if sample.name == "gateway_shadow_requests_total"
        and sample.labels["shadow"] == "cand"
        and sample.labels["outcome"] == outcome
    )


async def test_a_follower_that_cannot_load_a_variants_new_version_keeps_serving_the_old_one(
    demo_registry: Path, broker: EmbeddedBroker
) -> None:
    # Before, the follower replaced the variant's serving deployment by one that was not
    # ready: every request routed to it answered 503 there, while the route said it served.
    proposer_registry, follower_registry = two_registries(demo_registry)
    bootstrap = broker.bootstrap_servers
    async with (
        replica(proposer_registry, "a", bootstrap) as a,
        replica(follower_registry, "b", bootstrap) as b,
    ):
        moved = {**PINNABLE, "variants": [{**CHAMPION, "ref": "breast_cancer/3"}, CHALLENGER]}
        changed = await a.client.put(ROUTE, json=moved)
        assert changed.status_code == 200, changed.text
        await wait_for(lambda: refused_gauge(b, "champion", "breast_cancer/3") == 1)
        seen = await answers(b)
        assert {status for status, _, _ in seen} == {200}, seen
        assert {(v, version) for _, v, version in seen} <= {("champion", "1"), ("challenger", "2")}
        pinned = await answers(b, 3, **{"x-model-variant": "champion"})
        assert pinned == Counter({(200, "champion", "1"): 3})
        (entry,) = await not_taken_up(b)
        assert entry["variant"] == "champion"
        assert entry["ref"] == "breast_cancer/3"
        assert entry["serving"] == "1"
        assert entry["version"] == "3"
        assert "breast_cancer/3" in entry["reason"]
        assert (await b.client.get("/v2/health/ready")).status_code == 200
        assert await not_taken_up(a) == []
        assert loaded(a, "champion", "3", "breast_cancer/3")

        # the artifact reaches the follower: it takes the version up, as the route says
        add_version_3(follower_registry)
        await wait_for(lambda: loaded(b, "champion", "3", "breast_cancer/3"))
        await wait_for(lambda: not loaded(b, "champion", "1", "breast_cancer@champion"))
        assert refused_gauge(b, "champion", "breast_cancer/3") is None
        assert await not_taken_up(b) == []
        pinned = await answers(b, 3, **{"x-model-variant": "champion"})
        assert pinned == Counter({(200, "champion", "3"): 3})

        # and a change back, once taken up, is the ordinary swap
        back = await a.client.put(ROUTE, json=PINNABLE)
        assert back.status_code == 200, back.text
        await wait_for(lambda: loaded(b, "champion", "1", "breast_cancer@champion"))
        await wait_for(lambda: not loaded(b, "champion", "3", "breast_cancer/3"))


async def test_a_follower_routes_a_new_variant_it_cannot_load_to_the_others(
    demo_registry: Path, broker: EmbeddedBroker
) -> None:
    proposer_registry, follower_registry = two_registries(demo_registry)
    bootstrap = broker.bootstrap_servers
    async with (
        replica(proposer_registry, "a", bootstrap) as a,
        replica(follower_registry, "b", bootstrap) as b,
    ):
        third = {"name": "third", "ref": "breast_cancer/3", "weight": 50}
        shadow = {"name": "cand", "ref": "breast_cancer/3", "sample": 1.0}
        route = {**PINNABLE,
                 "variants": [{**CHAMPION, "weight": 25}, {**CHALLENGER, "weight": 25}, third],
                 "shadows": [shadow]}  # fmt: skip
        changed = await a.client.put(ROUTE, json=route)
        assert changed.status_code == 200, changed.text
        await wait_for(lambda: refused_gauge(b, "third", "breast_cancer/3") == 1)
        await wait_for(lambda: refused_gauge(b, "cand", "breast_cancer/3") == 1)
        # its share goes to the variants that serve; neither it nor the shadow fails a request
        seen = await answers(b)
        assert {status for status, _, _ in seen} == {200}, seen
        assert {v for _, v, _ in seen} == {"champion", "challenger"}, seen
        await wait_for(lambda: shadow_copies(b, "dropped_not_ready") > 0)
        # a caller who asks for it by name is told why it cannot have it
        pinned = await b.client.post(INFER, json=BODY, headers={"x-model-variant": "third"})
        assert pinned.status_code == 503, pinned.text
        assert "variant 'third' is not ready" in pinned.json()["error"]
        assert "breast_cancer/3" in pinned.json()["error"]
        entries = {e["variant"]: e for e in await not_taken_up(b)}
        assert set(entries) == {"third", "cand"}
        assert entries["third"]["serving"] is None
        assert entries["third"]["version"] == "3"
        assert (await a.client.get("/v2/health/ready")).status_code == 200
        assert (await answers(a, 20)).keys() >= {(200, "third", "3")}

        add_version_3(follower_registry)
        await wait_for(lambda: loaded(b, "third", "3", "breast_cancer/3"))
        await wait_for(lambda: refused_gauge(b, "cand", "breast_cancer/3") is None)
        assert await not_taken_up(b) == []
        seen = await answers(b)
        assert {status for status, _, _ in seen} == {200}, seen
        assert (200, "third", "3") in seen, seen
