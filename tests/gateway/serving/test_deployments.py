"""Hot swaps in process, over the real core: what an alias move must not let through.

A version that would break the requests being served, a version folder still being written,
and a registry that cannot be read for a while: the serving version keeps answering, the
failure is logged and counted, and what is whole and compatible is taken up.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_breast_cancer

from gateway.http import create_app, endpoints
from gateway.http._limits import HttpLimits
from gateway.http.app import GatewayApp
from gateway.protocol import parse_instances
from gateway.settings import load_settings
from registry_client import LocalRegistry
from tests._models import register_other_inputs_version
from tests._support import wait_for
from tests.gateway.http.test_protocol import answered, connection_to

ROW = load_breast_cancer().data[0].astype("float32").tolist()
BODY = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
INFER = "/v2/models/breast_cancer/infer"


class Gateway:
    """An in-process gateway following ``breast_cancer@champion``: a client and its metrics."""

    def __init__(
        self, app: GatewayApp, client: httpx.AsyncClient, metrics: CollectorRegistry
    ) -> None:
        self.app = app
        self.client = client
        self.metrics = metrics

    def unloaded(self, version: str) -> bool:
        labels = {"model": "breast_cancer", "version": version, "variant": "default",
                  "ref": "breast_cancer@champion"}  # fmt: skip
        return self.metrics.get_sample_value("gateway_model_loaded", labels) is None

    def failures(self, version: str) -> float:
        labels = {"model": "breast_cancer", "version": version, "variant": "default"}
        value = self.metrics.get_sample_value(
            "gateway_model_loads_total", {**labels, "outcome": "failure"}
        )
        return value or 0.0

    def not_taken_up(self, version: str) -> float | None:
        labels = {"model": "breast_cancer", "version": version, "variant": "default",
                  "ref": "breast_cancer@champion"}  # fmt: skip
        return self.metrics.get_sample_value("gateway_model_not_taken_up", labels)

    async def version(self) -> str:
        answer = await self.client.post(INFER, json=BODY)
        assert answer.status_code == 200, answer.text
        version: str = answer.json()["model_version"]
        return version


@asynccontextmanager
async def following_champion(registry: Path) -> AsyncIterator[Gateway]:
    settings = load_settings(
        registry={"root": str(registry), "poll_interval_s": 0.02},
        models=[{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
    )
    metrics = CollectorRegistry()
    app = create_app(settings, metrics_registry=metrics)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Gateway(app, client, metrics)


def point_champion_at(registry: Path, version: str) -> None:
    """Move the alias by hand, as a script would, to a version that may not exist yet."""
    aliases = registry / "breast_cancer" / "aliases.json"
    aliases.write_text(json.dumps({**json.loads(aliases.read_text()), "champion": version}))


async def test_a_version_that_takes_other_inputs_does_not_replace_the_serving_one(
    demo_registry: Path,
) -> None:
    # it used to be switched to: every request made for version 1 then failed with 400
    async with following_champion(demo_registry) as gw:
        other = register_other_inputs_version(demo_registry, alias="champion")
        await wait_for(lambda: gw.failures(other) == 1)
        assert await gw.version() == "1"
        ready = await gw.client.get("/v2/models/breast_cancer/ready")
        assert ready.json()["version"] == "1"
        # the counter says it once; the gauge says it for as long as it lasts
        assert gw.not_taken_up(other) == 1
        # a version that keeps the inputs is still taken up after it
        LocalRegistry(demo_registry).set_alias_sync("breast_cancer", "champion", "2")
        for _ in range(1000):
            if await gw.version() == "2":
                break
            await asyncio.sleep(0.02)
        assert await gw.version() == "2"
        assert gw.failures(other) == 1  # tried once, not on every poll
        assert gw.not_taken_up(other) is None
        # refused again, then the alias moves back to the version that serves: cleared too
        point_champion_at(demo_registry, other)
        await wait_for(lambda: gw.not_taken_up(other) == 1)
        point_champion_at(demo_registry, "2")
        await wait_for(lambda: gw.not_taken_up(other) is None)
        assert await gw.version() == "2"


async def test_model_metadata_shows_a_version_not_taken_up_while_the_gauge_does(
    demo_registry: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # an operator asking the API saw version 1 served and nothing of the refused version: the
    # state showed only in the gauge and the log
    async def shown() -> list[dict[str, Any]]:
        answer = await gw.client.get("/v2/models/breast_cancer")
        assert answer.status_code == 200, answer.text
        entries: list[dict[str, Any]] = answer.json()["parameters"]["not_taken_up"]
        return entries

    async with following_champion(demo_registry) as gw:
        assert await shown() == []
        before = time.time()
        other = register_other_inputs_version(demo_registry, alias="champion")
        await wait_for(lambda: gw.not_taken_up(other) == 1)
        (entry,) = await shown()
        reason = entry.pop("reason")
        assert before <= entry.pop("since") <= time.time()
        assert entry == {
            "variant": "default",
            "ref": "breast_cancer@champion",
            "serving": "1",
            "version": other,
        }
        assert reason.startswith(f"model breast_cancer (breast_cancer@champion -> version {other})")
        assert "would break the requests version 1 takes" in reason
        assert f"model breast_cancer: {reason}" in caplog.messages  # the log line's text
        since = (await shown())[0]["since"]
        assert (await gw.client.get("/v2/models/breast_cancer/versions/1")).json()["parameters"][
            "not_taken_up"
        ] == await shown()
        # the alias moves back to the version that serves: gone with the gauge's series
        point_champion_at(demo_registry, "1")
        await wait_for(lambda: gw.not_taken_up(other) is None)
        assert await shown() == []
        # refused again (since starts again), then another version is taken up: gone again
        point_champion_at(demo_registry, other)
        await wait_for(lambda: gw.not_taken_up(other) == 1)
        (entry,) = await shown()
        assert entry["version"] == other
        assert entry["since"] > since
        point_champion_at(demo_registry, "2")
        await wait_for(lambda: gw.not_taken_up(other) is None)
        assert await shown() == []
        assert await gw.version() == "2"


async def test_a_version_folder_written_in_place_is_served_once_whole_and_not_before(
    demo_registry: Path,
) -> None:
    # a folder seen half written failed for good: the whole version was never taken up; and
    # a folder whose model.onnx came before its metadata.json was served without its metadata
    source = demo_registry / "breast_cancer" / "2"
    folder = demo_registry / "breast_cancer" / "3"
    async with following_champion(demo_registry) as gw:
        folder.mkdir()
        point_champion_at(demo_registry, "3")
        await wait_for(lambda: gw.failures("3") >= 1)  # model.onnx is missing
        tried = gw.failures("3")
        shutil.copyfile(source / "model.onnx", folder / "model.onnx")
        await wait_for(lambda: gw.failures("3") > tried)  # metadata.json is missing
        assert await gw.version() == "1"
        shutil.copyfile(source / "metadata.json", folder / "metadata.json")
        for _ in range(1000):
            if await gw.version() == "3":
                break
            await asyncio.sleep(0.02)
        assert await gw.version() == "3"
        described = (await gw.client.get("/v2/models/breast_cancer")).json()
        assert described["parameters"]["class_labels"] == ["malignant", "benign"]


async def test_a_registry_that_cannot_be_read_leaves_the_gateway_up_and_not_ready(
    demo_registry: Path,
) -> None:
    # the OSError escaped: the gateway did not start, and a running one logged a traceback on
    # every poll
    aliases = demo_registry / "breast_cancer" / "aliases.json"
    text = aliases.read_text()
    aliases.unlink()
    aliases.mkdir()  # reading it fails as a file without permissions would (even for root)
    async with following_champion(demo_registry) as gw:
        ready = await gw.client.get("/v2/health/ready")
        assert ready.status_code == 503
        reason = ready.json()["not_ready"]["breast_cancer"]["default"]
        assert "cannot read the registry" in reason
        assert "aliases.json: Is a directory" in reason
        aliases.rmdir()
        aliases.write_text(text)
        for _ in range(1000):
            if (await gw.client.get("/v2/health/ready")).status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert await gw.version() == "1"


async def test_a_large_body_whose_version_is_swapped_out_while_it_is_parsed_goes_to_the_new_one(
    demo_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a large body is parsed on a worker thread for the version chosen first; if an alias move
    # swaps that version out meanwhile, the request is routed and parsed again (off the loop),
    # never queued on a version that has stopped taking requests (that answered 503)
    parsing, release = threading.Event(), threading.Event()
    parsed_off_loop: list[bool] = []

    def spy(*args: Any) -> Any:
        off_loop = threading.current_thread() is not threading.main_thread()
        parsed_off_loop.append(off_loop)
        if off_loop and not parsing.is_set():
            parsing.set()
            assert release.wait(30)
        return parse_instances(*args)

    monkeypatch.setattr(endpoints, "parse_instances", spy)
    names = [str(n) for n in load_breast_cancer().feature_names]
    body = json.dumps({"instances": [dict(zip(names, ROW, strict=True))] * 1000}).encode()
    assert len(body) > endpoints.LARGE_BODY_BYTES
    path = "/v1/models/breast_cancer:predict"
    async with following_champion(demo_registry) as gw:
        moves = [("1", "2"), ("2", "1")]
        for (old, new), driver in zip(moves, ("own protocol", "asgi"), strict=True):
            parsing.clear()
            release.clear()
            parsed_off_loop.clear()
            if driver == "asgi":
                sent = asyncio.ensure_future(gw.client.post(path, content=body))
            else:
                protocol, transport = connection_to(gw.app, HttpLimits())
                head = f"POST {path} HTTP/1.1\r\nHost: t\r\ncontent-length: {len(body)}\r\n\r\n"
                protocol.data_received(head.encode() + body)
            await wait_for(parsing.is_set)
            point_champion_at(demo_registry, new)
            await wait_for(functools.partial(gw.unloaded, old))  # it takes no requests now
            release.set()
            if driver == "asgi":
                answer = await sent
                status, doc = answer.status_code, answer.json()
            else:
                await answered(transport, 1)
                status = int(transport.written[9:12])
                doc = json.loads(transport.written[transport.written.index(b"\r\n\r\n") + 4 :])
            assert status == 200, doc
            assert doc["model_version"] == new
            assert len(doc["predictions"]) == 1000
            assert parsed_off_loop == [True, True], driver


def copy_version(registry: Path, version: str, **metadata: Any) -> None:
    """Version 1's files as ``version``, with these metadata fields, moved into place whole."""
    model = registry / "breast_cancer"
    building = model / f".{version}"
    shutil.copytree(model / "1", building)
    path = building / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **metadata}))
    building.rename(model / version)


async def test_batching_hints_past_any_batch_are_not_warmed_up_or_refuse_the_version(
    demo_registry: Path,
) -> None:
    # Before, a warm-up size of 10**9 rows in a version's metadata raised MemoryError out of
    # the loader on every poll: the version was neither taken up nor said to be refused (no
    # not_taken_up entry, no failure counted), and a size the allocation survived would have
    # run a batch of that many rows.
    async with following_champion(demo_registry) as gw:
        copy_version(demo_registry, "3", batching={"warmup_batch_sizes": [1, 10**9, 0, -5]})
        point_champion_at(demo_registry, "3")
        for _ in range(1000):
            if await gw.version() == "3":
                break
            await asyncio.sleep(0.02)
        assert await gw.version() == "3"  # warmed up at the batch sizes the gateway runs
        copy_version(demo_registry, "4", batching={"max_batch_size": 10**13})
        point_champion_at(demo_registry, "4")
        await wait_for(lambda: gw.not_taken_up("4") == 1)
        assert gw.failures("4") == 1
        assert await gw.version() == "3"
        answer = await gw.client.get("/v2/models/breast_cancer")
        (entry,) = answer.json()["parameters"]["not_taken_up"]
        assert f"warm-up at batch size {10**13}" in entry["reason"]


async def test_a_version_whose_metadata_names_another_feature_input_is_refused(
    demo_registry: Path,
) -> None:
    # Before, it was taken up: its named features no longer reached the model, and every
    # request in the simple form that version 1 answered got a 400.
    async with following_champion(demo_registry) as gw:
        copy_version(demo_registry, "3", feature_input="nope")
        point_champion_at(demo_registry, "3")
        await wait_for(lambda: gw.not_taken_up("3") == 1)
        answer = await gw.client.get("/v2/models/breast_cancer")
        (entry,) = answer.json()["parameters"]["not_taken_up"]
        assert "feature_input 'nope' is not an input of model.onnx" in entry["reason"]
        names = [f["name"] for f in answer.json()["parameters"]["features"]]
        row = dict(zip(names, ROW, strict=True))
        predicted = await gw.client.post(
            "/v1/models/breast_cancer:predict", json={"instances": [row]}
        )
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["model_version"] == "1"
