from __future__ import annotations

import contextlib
import gzip
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_breast_cancer

from gateway.errors import OverloadedError, RateLimitedError
from gateway.http import _asgi, create_app, endpoints
from gateway.http._limits import HttpLimits
from gateway.http.app import GatewayApp
from gateway.protocol import encoding, parse_instances
from gateway.settings import load_settings
from registry_client import LocalRegistry, ModelMetadata
from tests.gateway.http.test_protocol import answered, connection_to

ROW = load_breast_cancer().data[0].astype("float32").tolist()


@asynccontextmanager
async def started(registry: Path, **kw: Any) -> AsyncIterator[GatewayApp]:
    """The demo model's gateway app with its lifespan running."""
    settings = load_settings(
        registry__root=registry,
        registry__poll_interval_s=60,
        models=[{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
        **kw,
    )
    app = create_app(settings, metrics_registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def serving(registry: Path, **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with started(registry, **kw) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


def infer_body(*rows: list[float], **extra: object) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "input", "shape": [len(rows), 30], "datatype": "FP32", "data": list(rows)}
        ],
        **extra,
    }


async def test_health_server_and_model_metadata(demo_registry: Path) -> None:
    async with serving(demo_registry) as client:
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).status_code == 200
        server = (await client.get("/v2")).json()
        assert "binary_tensor_data" in server["extensions"]
        meta = (await client.get("/v2/models/breast_cancer")).json()
        assert meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
        assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
        assert (await client.get("/v2/models/breast_cancer/versions/1")).status_code == 200
        assert (await client.get("/v2/models/breast_cancer/versions/1/ready")).status_code == 200
        missing = await client.get("/v2/models/breast_cancer/versions/9/ready")
        assert missing.status_code == 404
        assert "no version '9'" in missing.json()["error"]


async def test_v2_infer_and_simple_predict_agree(demo_registry: Path) -> None:
    async with serving(demo_registry) as client:
        v2 = await client.post("/v2/models/breast_cancer/infer", json=infer_body(ROW, id="a1"))
        assert v2.status_code == 200
        doc = v2.json()
        assert doc["id"] == "a1"
        assert doc["model_version"] == "1"
        label = next(o for o in doc["outputs"] if o["name"] == "label")
        assert label["data"] == [0]  # the first row of the dataset is malignant
        names = [str(n) for n in load_breast_cancer().feature_names]
        simple = await client.post(
            "/v1/models/breast_cancer:predict",
            json={"instances": [dict(zip(names, ROW, strict=True)), ROW]},
        )
        assert simple.status_code == 200
        predictions = simple.json()["predictions"]
        assert [p["label"] for p in predictions] == [0, 0]
        assert abs(sum(predictions[0]["probabilities"]) - 1) < 1e-5


async def test_error_table(demo_registry: Path) -> None:
    async with serving(demo_registry, server__max_body_bytes=4096) as client:
        cases = [
            (await client.post("/v2/models/nope/infer", json=infer_body(ROW)), 404, "unknown model"),
            (await client.post("/v2/models/breast_cancer/infer", content=b"{"), 400, "not valid JSON"),
            (
                await client.post(
                    "/v2/models/breast_cancer/infer",
                    json={"inputs": [{"name": "inp", "shape": [1], "datatype": "FP32", "data": [1]}]},
                ),
                400,
                "missing inputs ['input']",
            ),
            (
                await client.post(
                    "/v2/models/breast_cancer/infer",
                    json={"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": ROW}]},
                ),
                400,
                "datatype FP64, the model takes FP32",
            ),
            (
                await client.post(
                    "/v2/models/breast_cancer/infer",
                    content=orjson.dumps(infer_body([float("nan")] * 30)).replace(b"null", b"NaN"),
                ),
                400,
                "not valid JSON",
            ),
            (
                await client.post(
                    "/v2/models/breast_cancer/infer", json=infer_body(ROW, outputs=[{"name": "zz"}])
                ),
                400,
                "unknown output 'zz'",
            ),
            (
                await client.post("/v2/models/breast_cancer/infer", json=infer_body(*[ROW] * 30)),
                413,
                "exceeds 4096 bytes",
            ),
            (await client.get("/v2/models/breast_cancer/infer"), 405, "not allowed"),
            (await client.get("/v3"), 404, "no route"),
        ]  # fmt: skip
        for response, status, message in cases:
            assert response.status_code == status, response.text
            assert message in response.json()["error"]


async def test_nan_is_refused_unless_allowed(demo_registry: Path) -> None:
    # JSON has no NaN; a binary tensor can carry one.
    import numpy as np

    row = np.array([ROW], dtype=np.float32)
    row[0, 3] = np.nan
    header = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                     "parameters": {"binary_data_size": row.nbytes}}]}
    )  # fmt: skip
    headers = {"inference-header-content-length": str(len(header))}
    async with serving(demo_registry) as client:
        response = await client.post(
            "/v2/models/breast_cancer/infer", content=header + row.tobytes(), headers=headers
        )
        assert response.status_code == 400
        assert "NaN" in response.json()["error"]


async def test_gzip_body_and_limit_after_decompression(demo_registry: Path) -> None:
    async with serving(demo_registry, server__max_body_bytes=8192) as client:
        ok = await client.post(
            "/v2/models/breast_cancer/infer",
            content=gzip.compress(orjson.dumps(infer_body(ROW))),
            headers={"content-encoding": "gzip"},
        )
        assert ok.status_code == 200
        bomb = gzip.compress(orjson.dumps(infer_body(*[ROW] * 200)))
        assert len(bomb) < 8192
        refused = await client.post(
            "/v2/models/breast_cancer/infer", content=bomb, headers={"content-encoding": "gzip"}
        )
        assert refused.status_code == 413


async def test_alias_move_swaps_version_and_a_broken_version_never_serves(
    demo_registry: Path, tmp_path: Path
) -> None:
    registry = LocalRegistry(demo_registry)
    settings = load_settings(
        registry__root=demo_registry,
        registry__poll_interval_s=0.05,
        models=[{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
    )
    app = create_app(settings, metrics_registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            broken = tmp_path / "broken.onnx"
            broken.write_bytes(b"this is not an onnx model")
            bad = registry.register("breast_cancer", broken, ModelMetadata())
            registry.set_alias_sync("breast_cancer", "champion", bad)
            for _ in range(100):
                metrics = (await client.get("/metrics")).text
                if 'outcome="failure"' in metrics:
                    break
                await _sleep(0.02)
            assert (
                f'gateway_model_loads_total{{model="breast_cancer",outcome="failure",variant="default",version="{bad}"}} 1.0'
                in metrics
            )
            still = await client.post("/v2/models/breast_cancer/infer", json=infer_body(ROW))
            assert still.json()["model_version"] == "1"

            registry.set_alias_sync("breast_cancer", "champion", "2")
            for _ in range(100):
                response = await client.post("/v2/models/breast_cancer/infer", json=infer_body(ROW))
                if response.json()["model_version"] == "2":
                    break
                await _sleep(0.02)
            assert response.json()["model_version"] == "2"
            metrics = (await client.get("/metrics")).text
            assert (
                'gateway_model_swaps_total{model="breast_cancer",variant="default"} 1.0' in metrics
            )


async def test_not_ready_answers_503_with_retry_after(demo_registry: Path) -> None:
    (demo_registry / "breast_cancer" / "1" / "model.onnx").write_bytes(b"corrupt")
    async with serving(demo_registry) as client:
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503
        assert "sha256" in ready.json()["error"]
        response = await client.post("/v2/models/breast_cancer/infer", json=infer_body(ROW))
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert "not ready" in response.json()["error"]


async def test_metrics_carry_the_serving_labels(demo_registry: Path) -> None:
    async with serving(demo_registry) as client:
        await client.post("/v2/models/breast_cancer/infer", json=infer_body(ROW, ROW))
        await client.post("/v2/models/breast_cancer/infer", content=b"{")
        text = (await client.get("/metrics")).text
    assert (
        'gateway_requests_total{model="breast_cancer",outcome="success",variant="default",version="1"} 1.0'
        in text
    )
    assert 'gateway_rows_total{model="breast_cancer",variant="default",version="1"} 2.0' in text
    assert "gateway_request_duration_seconds_bucket" in text
    assert "gateway_queue_wait_seconds_count" in text
    assert 'gateway_batch_rows_sum{model="breast_cancer",variant="default",version="1"} 2.0' in text
    assert "gateway_build_info" in text
    assert (
        'gateway_model_loaded{model="breast_cancer",ref="breast_cancer@champion",variant="default",version="1"} 1.0'
        in text
    )


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def test_routing_is_strict_under_any_asgi_server(demo_registry: Path) -> None:
    # the app itself keeps %2F out of routing, redirects nothing and names allowed methods,
    # so uvicorn's own protocol (server.http_protocol: uvicorn) behaves as the gateway's does
    async with serving(demo_registry) as client:
        encoded = await client.get("/v2/models/breast_cancer%2Fversions%2F1")
        assert encoded.status_code == 404
        assert "breast_cancer%2Fversions%2F1" in encoded.json()["error"]
        versioned = await client.post(
            "/v2/models/breast_cancer%2Fversions%2F1/infer", json=infer_body(ROW)
        )
        assert versioned.status_code == 404
        slash = await client.get("/v2/", headers={"host": "evil.example"})
        assert slash.status_code == 404
        assert "location" not in slash.headers
        wrong = await client.delete("/admin/routes/breast_cancer")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "GET, HEAD, PATCH, PUT"
        assert "use GET, HEAD, PATCH, PUT" in wrong.json()["error"]


async def test_too_many_dimensions_are_refused_with_the_request_id_and_counted(
    demo_registry: Path,
) -> None:
    async with serving(demo_registry) as client:
        # more dimensions than numpy takes: refused before numpy sees them
        deep = {"inputs": [{"name": "input", "shape": [1] * 65, "datatype": "FP32", "data": [1]}]}
        response = await client.post("/v2/models/breast_cancer/infer", json=deep)
        assert response.status_code == 400
        assert response.headers["x-request-id"]
        metrics = (await client.get("/metrics")).text
        assert 'outcome="invalid"' in metrics


async def test_readiness_names_the_endpoints_that_are_not_ready(demo_registry: Path) -> None:
    models = [
        {"name": "breast_cancer", "ref": "breast_cancer@champion"},
        {"name": "broken", "ref": "models:/breast_cancer/9"},
    ]
    for readiness, status in (("any", 200), ("all", 503)):
        settings = load_settings(
            registry__root=demo_registry,
            registry__poll_interval_s=60,
            server__readiness=readiness,
            models=models,
        )
        app = create_app(settings, metrics_registry=CollectorRegistry())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                ready = await client.get("/v2/health/ready")
                assert ready.status_code == status
                doc = ready.json()
                assert doc["ready"] is (status == 200)
                assert list(doc["not_ready"]) == ["broken"]
                assert "no version '9'" in doc["not_ready"]["broken"]["default"]
                served = await client.post("/v2/models/breast_cancer/infer", json=infer_body(ROW))
                assert served.status_code == 200


async def _metric_line(client: httpx.AsyncClient, prefix: str) -> str:
    text = (await client.get("/metrics")).text
    return next((line for line in text.splitlines() if line.startswith(prefix)), "")


async def _wait_metric(client: httpx.AsyncClient, line: str) -> None:
    """Wait (up to about 30 s) until /metrics holds ``line``."""
    import asyncio

    prefix = line.rsplit(" ", 1)[0]
    for _ in range(3000):
        if await _metric_line(client, prefix) == line:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{line!r} never appeared")


async def test_requests_beyond_the_in_flight_limit_are_refused_before_any_work(
    demo_registry: Path,
) -> None:
    import asyncio

    # One request in flight at most; a single row waits in its batch for the whole 10 s delay
    # (a batch closes earlier only when full: 2 rows).
    async with serving(
        demo_registry,
        admission={"limits": {"mode": "fixed", "max_in_flight": 1}},
        batching={"max_batch_delay_s": 10, "close_when_idle": False, "max_batch_size": 2},
    ) as client:
        path = "/v2/models/breast_cancer/infer"
        first = asyncio.create_task(client.post(path, json=infer_body(ROW)))
        in_flight = 'gateway_admission_in_flight{model="breast_cancer"}'
        await _wait_metric(client, f"{in_flight} 1.0")
        refused = await client.post(path, content=b"not even JSON: never parsed")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "in flight are at the limit" in refused.json()["error"]
        assert not first.done()
        # the refusal left no trace beyond its counter: no request recorded, no model run
        assert await _metric_line(client, "gateway_requests_total{") == ""
        refusals = 'gateway_admission_refusals_total{model="breast_cancer",reason="endpoint_limit"}'
        assert await _metric_line(client, refusals) == f"{refusals} 1.0"
        assert (await client.get("/v2/health/live")).status_code == 200
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        # the first caller gives up: it leaves its batch, and its place is freed
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await _wait_metric(client, f"{in_flight} 0.0")
        answered = await client.post(path, json=infer_body(ROW, ROW))
        assert answered.status_code == 200


def test_retry_after_is_rounded_up_to_whole_seconds() -> None:
    """Sooner than asked, a retry is refused again: 2.5 s is "3", never "2"."""
    for seconds, header in [(0.001, b"1"), (1.0, b"1"), (1.2, b"2"), (2.5, b"3"), (100.0, b"100")]:
        for error in (RateLimitedError("over", seconds), OverloadedError("busy", seconds)):
            assert (b"retry-after", header) in _asgi.error_reply(error).headers


async def test_a_caller_over_its_own_rate_gets_429_and_others_are_served(
    demo_registry: Path,
) -> None:
    async with serving(
        demo_registry, admission={"limits": {"client_rate_per_s": 0.01, "client_burst": 2}}
    ) as client:
        path = "/v2/models/breast_cancer/infer"
        key_a = {"x-api-key": "a"}
        statuses = [
            (await client.post(path, json=infer_body(ROW), headers=key_a)).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        limited = await client.post(path, json=infer_body(ROW), headers=key_a)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 100  # a token every 100 s
        assert "exceeds its rate" in limited.json()["error"]
        other = await client.post(path, json=infer_body(ROW), headers={"x-routing-key": "b"})
        assert other.status_code == 200
        assert (await client.post(path, json=infer_body(ROW))).status_code == 200
        refusals = 'gateway_admission_refusals_total{model="breast_cancer",reason="client_rate"}'
        assert await _metric_line(client, refusals) == f"{refusals} 2.0"


async def test_readiness_reports_overload_only_when_asked_and_liveness_never(
    demo_registry: Path,
) -> None:
    async with serving(
        demo_registry,
        admission={
            "limits": {"client_rate_per_s": 0.01, "client_burst": 1, "mode": "fixed"},
            "endpoints": {"breast_cancer": {"max_in_flight": 1}},
            "readiness_reports_overload": True,
            "interval_s": 10,
        },
        batching={"max_batch_delay_s": 10, "close_when_idle": False, "max_batch_size": 2},
    ) as client:
        import asyncio

        path = "/v2/models/breast_cancer/infer"
        # a caller over its own rate is not load: still ready
        await client.post(path, json=infer_body(ROW, ROW), headers={"x-api-key": "a"})
        assert (
            await client.post(path, json=infer_body(ROW), headers={"x-api-key": "a"})
        ).status_code == 429
        assert (await client.get("/v2/health/ready")).status_code == 200
        first = asyncio.create_task(client.post(path, json=infer_body(ROW)))
        in_flight = 'gateway_admission_in_flight{model="breast_cancer"}'
        await _wait_metric(client, f"{in_flight} 1.0")
        assert (await client.post(path, json=infer_body(ROW))).status_code == 503
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503
        assert "overloaded" in ready.json()["error"]
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first


async def test_a_small_compressed_body_that_inflates_large_is_inflated_off_the_loop(
    demo_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 16 KiB of gzip can stand for 16 MiB of JSON: inflating and parsing that on the event loop
    # held every other connection for half a second, as the compressed body was "small"
    inflated_on: list[tuple[bool, int]] = []  # (on the event loop's thread, the limit)
    inflate = encoding._inflate

    def spy(body: bytes, coding: str, limit: int) -> bytes:
        inflated_on.append((threading.current_thread() is threading.main_thread(), limit))
        return inflate(body, coding, limit)

    monkeypatch.setattr(encoding, "_inflate", spy)
    rows = [[0.0] * 30] * 10_000
    plain = orjson.dumps(infer_body(*rows))
    bomb = gzip.compress(plain)
    assert len(bomb) < 16 * 1024 < _asgi.INLINE_INFLATE_BYTES < len(plain)
    small = gzip.compress(orjson.dumps(infer_body(ROW)))
    head = b"POST /v2/models/breast_cancer/infer HTTP/1.1\r\nHost: t\r\ncontent-encoding: gzip\r\n"
    # on worker threads (parse processes inflate in their own: tests/gateway/http/test_parse_pool)
    async with started(demo_registry, server={"parse_processes": 0}) as app:
        # the gateway's own HTTP protocol (the fast path), on a fake transport
        protocol, transport = connection_to(app, HttpLimits())
        for body in (small, bomb):
            protocol.data_received(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        await answered(transport, 2)
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", transport.written)
        assert statuses == [b"200", b"200"]
        fast = list(inflated_on)
        inflated_on.clear()
        # the ASGI path (read_body: every other endpoint, and infer without the fast path)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g")
        async with client:
            headers = {"content-encoding": "gzip"}
            url = "/v2/models/breast_cancer/infer"
            assert (await client.post(url, content=bomb, headers=headers)).status_code == 200
    limit = HttpLimits().max_body_bytes
    inline = _asgi.INLINE_INFLATE_BYTES
    # small: inflated on the loop; the bomb: tried there up to the inline bound, then whole
    # on a worker thread
    assert fast == [(True, inline), (True, inline), (False, limit)]
    assert inflated_on == [(True, inline), (False, limit)]


async def test_a_large_predict_body_is_parsed_off_the_loop_and_a_small_one_on_it(
    demo_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # :predict parsed its rows on the event loop whatever the body's size (only joining and
    # decompressing went to a worker thread): 10 MB held every other connection ~100 ms.
    parsed_on: list[bool] = []  # on the event loop's thread

    def spy(*args: Any) -> Any:
        parsed_on.append(threading.current_thread() is threading.main_thread())
        return parse_instances(*args)

    monkeypatch.setattr(endpoints, "parse_instances", spy)
    names = [str(n) for n in load_breast_cancer().feature_names]
    row = dict(zip(names, ROW, strict=True))
    small = orjson.dumps({"instances": [row], "id": "small"})
    large = orjson.dumps({"instances": [row] * 1000, "id": "large"})
    assert len(small) < endpoints.LARGE_BODY_BYTES < len(large)
    path = "/v1/models/breast_cancer:predict"
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\n".encode()
    # on worker threads (in parse processes: tests/gateway/http/test_parse_pool)
    async with started(demo_registry, server={"parse_processes": 0}) as app:
        # the gateway's own HTTP protocol (the fast path), on a fake transport
        protocol, transport = connection_to(app, HttpLimits())
        for body in (small, large):
            protocol.data_received(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        await answered(transport, 2)
        answers = transport.written.split(b"HTTP/1.1 ")[1:]
        # the ASGI path
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g")
        async with client:
            asgi = [(await client.post(path, content=body)).json() for body in (small, large)]
    for answer in answers:
        assert answer.startswith(b"200 ")
    fast = [orjson.loads(a[a.index(b"\r\n\r\n") + 4 :]) for a in answers]
    for docs in (fast, asgi):
        assert [d["id"] for d in docs] == ["small", "large"]
        (one,), many = docs[0]["predictions"], docs[1]["predictions"]
        assert one["label"] == 0  # the first row of the dataset is malignant
        assert [p["label"] for p in many] == [0] * 1000
        assert all(p["probabilities"] == pytest.approx(one["probabilities"]) for p in many)
    assert parsed_on == [True, False, True, False]
