"""The admin API in-process over the real core: revisions, concurrent operators, errors, bodies,
and (with the embedded broker) replicas that share a signed control topic."""

from __future__ import annotations

import asyncio
import gzip
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from gateway.http import create_app
from gateway.settings import load_settings
from gateway.traffic import ControlSigner
from monitors.broker import EmbeddedBroker
from tests._support import free_port, wait_for

TOKEN = "s3cret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
KEY = "control-signing-key-of-32-chars!!"
ROUTE = "/admin/routes/breast_cancer"
CHAMPION: dict[str, Any] = {"name": "champion", "ref": "breast_cancer@champion", "weight": 70}
CHALLENGER: dict[str, Any] = {"name": "challenger", "ref": "breast_cancer@challenger", "weight": 30}
AB: dict[str, Any] = {"endpoint": "breast_cancer", "variants": [CHAMPION, CHALLENGER]}


class Gateway:
    """One in-process gateway: its admin client and its metrics registry."""

    def __init__(self, client: httpx.AsyncClient, metrics: CollectorRegistry) -> None:
        self.client = client
        self.metrics = metrics

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.get_sample_value(name, labels) or 0.0

    def series(self, name: str) -> int:
        return sum(1 for m in self.metrics.collect() for s in m.samples if s.name == name)


@asynccontextmanager
async def gateway(
    registry: Path,
    audit: Path,
    routes: list[dict[str, Any]] | None = None,
    poll_interval_s: float = 60,
    **settings: Any,
) -> AsyncIterator[Gateway]:
    """A gateway app on ``registry`` with its admin API (``routes``: [AB] by default), lifespan
    running, and a client with the admin token."""
    config = load_settings(
        registry={"root": str(registry), "poll_interval_s": poll_interval_s},
        routes=routes or [AB],
        admin={"tokens": {"ops": TOKEN}, "audit_log": str(audit)},
        **settings,
    )
    metrics = CollectorRegistry()
    app = create_app(config, metrics_registry=metrics)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", headers=AUTH
        ) as client:
            yield Gateway(client, metrics)


def control(bootstrap: str, replica: str, timeout_s: float = 10.0) -> dict[str, Any]:
    return {
        "control": {"enabled": True, "bootstrap_servers": bootstrap, "signing_key": KEY,
                    "timeout_s": timeout_s},
        "server": {"replica_id": replica},
    }  # fmt: skip


def weights(route: dict[str, Any]) -> dict[str, int]:
    return {v["name"]: v["weight"] for v in route["variants"]}


async def lost_updates(first: Gateway, second: Gateway, trials: int) -> int:
    """Trials in which one of two concurrent PATCHes (weights on one, allow_pinning on the
    other, each sent to its gateway) is missing from the route afterwards."""
    lost = 0
    for trial in range(trials):
        pinning = trial % 2 == 0
        split = {"champion": 40 + trial, "challenger": 60 - trial}
        answers = await asyncio.gather(
            first.client.patch(ROUTE, json={"weights": split}),
            second.client.patch(ROUTE, json={"allow_pinning": pinning}),
        )
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        latest = max(a.json()["after"]["revision"] for a in answers)
        for gw in (first, second):
            await wait_for(lambda gw=gw, latest=latest: changes_applied(gw) >= latest)  # type: ignore[misc]
            route = (await gw.client.get(ROUTE)).json()
            lost += weights(route) != split or route["allow_pinning"] != pinning
    return lost


def changes_applied(gw: Gateway) -> int:
    return int(gw.metric("gateway_route_changes_total", model="breast_cancer", actor="ops"))


def chained(history: list[dict[str, Any]]) -> bool:
    """Every change starts from the state the previous one left."""
    return all(b["before"] == a["after"] for a, b in itertools.pairwise(history))


async def test_concurrent_patches_are_all_applied_one_after_the_other(
    demo_registry: Path, tmp_path: Path
) -> None:
    async with gateway(demo_registry, tmp_path / "audit.jsonl") as gw:
        assert await lost_updates(gw, gw, trials=20) == 0
        history = (await gw.client.get("/admin/history?limit=1000")).json()["changes"]
    assert len(history) == 40
    assert [c["after"]["revision"] for c in history] == list(range(1, 41))
    assert chained(history)


async def test_revisions_etag_and_if_match(demo_registry: Path, tmp_path: Path) -> None:
    async with gateway(demo_registry, tmp_path / "audit.jsonl") as gw:
        first = await gw.client.get(ROUTE)
        assert first.headers["etag"] == '"0"'
        changed = await gw.client.patch(
            ROUTE, json={"weights": {"champion": 50, "challenger": 50}}, headers={"if-match": '"0"'}
        )
        assert changed.status_code == 200
        assert changed.headers["etag"] == '"1"'
        stale = await gw.client.patch(
            ROUTE, json={"allow_pinning": True}, headers={"if-match": '"0"'}
        )
        assert stale.status_code == 412
        assert "revision" in stale.json()["error"]
        put = await gw.client.put(ROUTE, json={**AB, "revision": 0}, headers={"if-match": '"1"'})
        assert put.status_code == 200
        assert put.headers["etag"] == '"2"'
        route = (await gw.client.get(ROUTE)).json()
    assert (route["revision"], route["allow_pinning"]) == (2, False)
    assert weights(route) == {"champion": 70, "challenger": 30}


async def test_concurrent_puts_load_each_model_once_and_leak_none(
    demo_registry: Path, tmp_path: Path
) -> None:
    async with gateway(demo_registry, tmp_path / "audit.jsonl") as gw:
        loads = "gateway_model_loads_total"
        before = gw.metric(loads, model="breast_cancer", version="1", variant="champion",
                           outcome="success")  # fmt: skip

        def put(version: int) -> Any:
            route = {**AB, "variants": [{**CHAMPION, "ref": f"breast_cancer/{version}"},
                                        CHALLENGER]}  # fmt: skip
            return gw.client.put(ROUTE, json=route)

        answers = await asyncio.gather(*(put(1 + i % 2) for i in range(10)))
        assert [a.status_code for a in answers] == [200] * 10
        history = (await gw.client.get("/admin/history")).json()["changes"]
        refs = [c["after"]["variants"][0]["ref"] for c in history]
        previous = ["breast_cancer@champion", *refs[:-1]]
        changes = sum(a != b for a, b in zip(refs, previous, strict=True))
        total = sum(
            s.value
            for m in gw.metrics.collect()
            for s in m.samples
            if s.name == loads and s.labels["variant"] == "champion"
        )
        assert total - before == changes, "one load per change of the model, none wasted"
        # every replaced deployment unloads: only the two serving ones stay
        await wait_for(lambda: gw.series("gateway_model_loaded") == 2)


async def test_bad_admin_bodies_are_refused_with_a_clear_400(
    demo_registry: Path, tmp_path: Path
) -> None:
    many = [{"name": f"v{i}", "ref": "breast_cancer@champion", "weight": 0} for i in range(17)]
    cases: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
        ("PATCH", ROUTE, {"weights": {"champion": "50", "challenger": 50}}, 400, "weights"),
        ("PATCH", ROUTE, {"weights": {"champion": 50.5, "challenger": 49.5}}, 400, "weights"),
        ("PATCH", ROUTE, {"weights": {"champion": True, "challenger": 99}}, 400, "weights"),
        ("PATCH", ROUTE, {"allow_pinning": "yes"}, 400, "allow_pinning"),
        ("PATCH", ROUTE, {"allow_pinning": 1}, 400, "allow_pinning"),
        ("PATCH", ROUTE, {"buckets": []}, 400, "cannot patch"),
        ("PATCH", ROUTE, {"weights": ["champion"]}, 400, "weights"),
        ("PUT", ROUTE, {**AB, "variants": many}, 400, "variants"),
        ("PUT", "/admin/routes/" + "x" * 200, AB, 400, "endpoint"),
        ("PUT", ROUTE, {**AB, "variants": [{**CHAMPION, "name": "n" * 300}]}, 400, "name"),
        ("PUT", ROUTE, {**AB, "variants": [{**CHAMPION, "ref": "m@" + "a" * 300}]}, 400, "ref"),
        ("GET", "/admin/history?limit=abc", None, 400, "limit"),
        ("GET", "/admin/history?limit=0", None, 400, "limit"),
        ("GET", "/admin/history?limit=" + "9" * 40, None, 400, "limit"),
    ]  # fmt: skip
    async with gateway(demo_registry, tmp_path / "audit.jsonl") as gw:
        for method, path, body, status, words in cases:
            answer = await gw.client.request(method, path, json=body)
            assert answer.status_code == status, (method, path, body, answer.text)
            assert words in answer.json()["error"], answer.text
        huge = await gw.client.patch(ROUTE, content=b'{"x": "' + b"a" * 100_000 + b'"}')
        assert huge.status_code == 413
        assert "error" in huge.json()
        assert (await gw.client.get(ROUTE)).json()["revision"] == 0, "nothing changed"


async def test_admin_bodies_take_the_content_encodings_every_endpoint_takes(
    demo_registry: Path, tmp_path: Path
) -> None:
    patch = orjson.dumps({"weights": {"champion": 50, "challenger": 50}})
    async with gateway(demo_registry, tmp_path / "audit.jsonl") as gw:
        for coding, body, status, words in [
            ("br", patch, 400, "unsupported Content-Encoding 'br'"),
            ("gzip", patch, 400, "not valid gzip data"),
            ("gzip", gzip.compress(b" " * 70_000 + patch), 413, "exceeds 65536 bytes"),
        ]:
            answer = await gw.client.patch(
                ROUTE, content=body, headers={"content-encoding": coding}
            )
            assert answer.status_code == status, (coding, answer.text)
            assert words in answer.json()["error"], answer.text
        assert (await gw.client.get(ROUTE)).json()["revision"] == 0, "nothing changed"
        answer = await gw.client.patch(
            ROUTE, content=gzip.compress(patch), headers={"content-encoding": "gzip"}
        )
        assert answer.status_code == 200, answer.text
        assert weights(answer.json()["after"]) == {"champion": 50, "challenger": 50}


async def test_an_unwritable_audit_log_changes_nothing(demo_registry: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    async with gateway(demo_registry, tmp_path / "a-file" / "audit.jsonl") as gw:
        answer = await gw.client.put(
            ROUTE,
            json={
                **AB,
                "variants": [{**CHAMPION, "ref": "breast_cancer/2"}, CHALLENGER],
            },
        )
        assert answer.status_code == 503
        assert "audit log" in answer.json()["error"]
        assert "nothing changed" in answer.json()["error"]
        route = (await gw.client.get(ROUTE)).json()
        assert route["revision"] == 0
        assert route["variants"][0]["ref"] == "breast_cancer@champion"
        await wait_for(lambda: gw.series("gateway_model_loaded") == 2)


async def test_an_unreachable_control_topic_answers_503_and_changes_nothing(
    demo_registry: Path, tmp_path: Path
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    async with gateway(demo_registry, tmp_path / "audit.jsonl",
                       **control(nobody, "a", timeout_s=1.0)) as gw:  # fmt: skip
        answer = await gw.client.patch(ROUTE, json={"weights": {"champion": 0, "challenger": 100}})
        assert answer.status_code == 503
        assert answer.headers["retry-after"]
        assert "nothing changed" in answer.json()["error"]
        route = (await gw.client.get(ROUTE)).json()
    assert (route["revision"], weights(route)) == (0, {"champion": 70, "challenger": 30})
    assert (tmp_path / "audit.jsonl").read_text() == "", "no change audited"


async def test_replicas_apply_concurrent_patches_in_one_order_and_refuse_forgeries(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    bootstrap = broker.bootstrap_servers
    async with (
        gateway(demo_registry, tmp_path / "a.jsonl", **control(bootstrap, "a")) as a,
        gateway(demo_registry, tmp_path / "b.jsonl", **control(bootstrap, "b")) as b,
    ):
        assert await lost_updates(a, b, trials=20) == 0
        history = (await a.client.get("/admin/history?limit=1000")).json()["changes"]
        assert history == (await b.client.get("/admin/history?limit=1000")).json()["changes"]
        assert chained(history)
        route = (await a.client.get(ROUTE)).json()

        forged = {**history[-1], "id": "forged", "actor": "mallory",
                  "base_revision": route["revision"],
                  "after": {**route, "revision": route["revision"] + 1,
                            "variants": [{**v, "weight": 100 * (v["name"] == "challenger")}
                                         for v in route["variants"]]}}  # fmt: skip
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait("gateway-control", orjson.dumps(forged))
            wrong = ControlSigner("gateway-control", b"not-the-key-" * 3)
            await producer.send_and_wait("gateway-control", wrong.sign(forged))
        finally:
            await producer.stop()
        rejected = "gateway_control_messages_rejected_total"
        for gw in (a, b):
            await wait_for(lambda gw=gw: gw.metric(rejected, reason="unsigned") == 1  # type: ignore[misc]
                           and gw.metric(rejected, reason="bad_signature") == 1)  # fmt: skip
            assert (await gw.client.get(ROUTE)).json() == route, "forgeries change nothing"


async def test_canary_steps_reach_the_audit_file_with_the_control_topic(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    audit = tmp_path / "audit.jsonl"
    async with gateway(demo_registry, audit, **control(broker.bootstrap_servers, "a")) as gw:
        rule = {"variant": "challenger", "baseline": "champion", "steps": [40, 100],
                "interval_s": 3600, "min_requests": 1}  # fmt: skip
        answer = await gw.client.patch(ROUTE, json={"canary": rule})
        assert answer.status_code == 200, answer.text

        def audited() -> list[str]:
            lines = audit.read_text().splitlines() if audit.exists() else []
            return [orjson.loads(line)["reason"] for line in lines]

        await wait_for(lambda: "canary started to 40%" in audited())
    assert audited() == ["PATCH", "canary started to 40%"]


async def test_a_shadow_that_cannot_load_is_refused_like_a_variant(
    demo_registry: Path, tmp_path: Path
) -> None:
    async with gateway(demo_registry, tmp_path / "audit.jsonl") as gw:
        missing = {"name": "cand", "ref": "breast_cancer/99", "sample": 0.5}
        refused = await gw.client.patch(ROUTE, json={"shadows": [missing]})
        assert refused.status_code == 409, refused.text
        assert "shadow cand" in refused.json()["error"]
        assert "breast_cancer/99" in refused.json()["error"]
        route = (await gw.client.get(ROUTE)).json()
        assert route["shadows"] == []
        assert route["revision"] == 0
        assert (await gw.client.get("/admin/history")).json()["changes"] == []
        # a loadable shadow is taken up as prepared: loaded once, then fed
        good = {"name": "cand", "ref": "breast_cancer/2", "sample": 0.5}
        accepted = await gw.client.patch(ROUTE, json={"shadows": [good]})
        assert accepted.status_code == 200, accepted.text
        assert [s["ref"] for s in (await gw.client.get(ROUTE)).json()["shadows"]] == [good["ref"]]
        loads = gw.metric("gateway_model_loads_total", model="breast_cancer", version="2",
                          variant="cand", outcome="success")  # fmt: skip
        assert loads == 1


async def test_a_variant_moved_to_another_ref_of_its_version_keeps_its_gauges(
    demo_registry: Path, tmp_path: Path
) -> None:
    # the replaced deployment's unload removed the (model, version, variant) queue-depth
    # series that the new one, serving the same version, still reports to
    async with gateway(demo_registry, tmp_path / "audit.jsonl") as gw:
        pinned = {**AB, "variants": [{**CHAMPION, "ref": "breast_cancer/1"}, CHALLENGER]}
        assert (await gw.client.put(ROUTE, json=pinned)).status_code == 200
        served = {"model": "breast_cancer", "version": "1", "variant": "champion"}
        old = {**served, "ref": "breast_cancer@champion"}
        await wait_for(lambda: gw.metrics.get_sample_value("gateway_model_loaded", old) is None)
        assert gw.metrics.get_sample_value("gateway_queue_depth", served) == 0.0
        assert gw.metric("gateway_model_loaded", **served, ref="breast_cancer/1") == 1.0
        # back to the alias, with a change that fails (a variant that cannot load) between
        broken = {**AB, "variants": [CHAMPION, {**CHALLENGER, "ref": "breast_cancer/99"}]}
        assert (await gw.client.put(ROUTE, json=broken)).status_code == 409
        assert (await gw.client.put(ROUTE, json=AB)).status_code == 200
        pinned_ref = {**served, "ref": "breast_cancer/1"}
        await wait_for(
            lambda: gw.metrics.get_sample_value("gateway_model_loaded", pinned_ref) is None
        )
        assert gw.metrics.get_sample_value("gateway_queue_depth", served) == 0.0
        assert gw.metric("gateway_model_loaded", **old) == 1.0


async def test_a_variant_made_a_shadow_of_its_name_unloads_as_a_variant(
    demo_registry: Path, tmp_path: Path
) -> None:
    # A shadow has a deployment of its own, not the variant's: the variant's stayed loaded
    # (watching its alias, in gateway_model_loaded) for as long as the shadow of its name lived.
    async with gateway(demo_registry, tmp_path / "audit.jsonl") as gw:
        demoted = {
            **AB,
            "variants": [{**CHAMPION, "weight": 100}],
            "shadows": [{"name": "challenger", "ref": "breast_cancer/2"}],
        }
        changed = await gw.client.put(ROUTE, json=demoted)
        assert changed.status_code == 200, changed.text
        variant = {"model": "breast_cancer", "version": "2", "variant": "challenger"}
        shadow = {**variant, "ref": "breast_cancer/2"}
        assert gw.metric("gateway_model_loaded", **shadow) == 1.0
        old = {**variant, "ref": "breast_cancer@challenger"}
        await wait_for(lambda: gw.metrics.get_sample_value("gateway_model_loaded", old) is None)
        assert gw.series("gateway_model_loaded") == 2  # the champion and the shadow
