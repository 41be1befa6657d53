"""Large JSON bodies parsed in parse processes (``server.parse_processes``): the same answers
and errors as on a worker thread, a pool started lazily, and one that outlives a killed process."""

from __future__ import annotations

import gzip
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_breast_cancer

from gateway.http import create_app
from gateway.http._limits import HttpLimits
from gateway.http.app import GatewayApp
from gateway.http.endpoints import LARGE_BODY_BYTES
from gateway.settings import load_settings
from tests._support import children_of
from tests.gateway.http.test_protocol import answered, connection_to

DATA = load_breast_cancer()
NAMES = [str(n) for n in DATA.feature_names]
ROWS: list[list[Any]] = np.tile(DATA.data.astype(np.float32), (4, 1)).tolist()  # 2,276 rows
INFER = "/v2/models/breast_cancer/infer"
PREDICT = "/v1/models/breast_cancer:predict"


@asynccontextmanager
async def started(registry: Path, processes: int) -> AsyncIterator[tuple[GatewayApp, Any]]:
    """The demo model's app, lifespan running, and its metrics registry."""
    settings = load_settings(
        registry__root=registry,
        registry__poll_interval_s=60,
        models=[{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
        server={"parse_processes": processes},
    )
    metrics = CollectorRegistry()
    app = create_app(settings, metrics_registry=metrics)
    async with app.router.lifespan_context(app):
        yield app, metrics


def tensor(rows: list[list[Any]], datatype: str = "FP32", **extra: Any) -> bytes:
    shape = extra.pop("shape", [len(rows), 30])
    inputs = [{"name": "input", "shape": shape, "datatype": datatype, "data": rows}]
    return orjson.dumps({"inputs": inputs, **extra})


def with_cell(value: Any) -> list[list[Any]]:
    rows = [list(row) for row in ROWS]
    rows[1234][5] = value
    return rows


def instances(rows: list[list[Any]]) -> bytes:
    objects: list[dict[str, Any]] = [dict(zip(NAMES, row, strict=True)) for row in rows]
    return orjson.dumps({"instances": objects, "id": "rows"})


# (path, body, headers): both JSON forms that go to a parse process, valid and not
BODIES: list[tuple[str, bytes, dict[str, str]]] = [
    (INFER, tensor(ROWS, id="big", outputs=[{"name": "label"}]), {}),
    (INFER, gzip.compress(tensor(ROWS, id="zipped")), {"content-encoding": "gzip"}),
    (INFER, tensor(ROWS)[:-40], {}),  # malformed JSON
    (INFER, tensor(with_cell("0.5")), {}),  # a string in a number tensor
    (INFER, tensor(with_cell(None)), {}),  # null: NaN, refused
    (INFER, tensor(ROWS, "FP64"), {}),  # a datatype the model does not take
    (INFER, tensor(ROWS, "FP99"), {}),  # no datatype at all
    (INFER, tensor(ROWS, shape=[len(ROWS) + 1, 30]), {}),
    (INFER, tensor(ROWS, outputs=[{"name": "nope"}]), {}),
    (INFER, tensor(ROWS), {"inference-header-content-length": "x1"}),
    (PREDICT, instances(ROWS), {}),
    (PREDICT, instances(with_cell("0.5")), {}),
    (PREDICT, instances(with_cell([1])), {}),
    (PREDICT, instances(ROWS)[:-3], {}),
    (PREDICT, orjson.dumps({"instances": [ROWS[0][:29]] * 10_000}), {}),  # a feature short
]


async def answers(app: GatewayApp) -> list[tuple[int, bytes]]:
    """Status and body of each of ``BODIES``, through the gateway's own protocol and over
    ASGI."""
    found = []
    for path, body, headers in BODIES:
        assert len(body) > LARGE_BODY_BYTES
        protocol, transport = connection_to(app, HttpLimits())
        head = f"POST {path} HTTP/1.1\r\nHost: t\r\ncontent-length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        protocol.data_received(head.encode() + b"\r\n" + body)
        await answered(transport, 1)
        match = re.fullmatch(rb"HTTP/1\.1 (\d{3}) .*?\r\n\r\n(.*)", transport.written, re.S)
        assert match is not None, transport.written[:300]
        found.append((int(match[1]), match[2]))
    asgi = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=asgi, base_url="http://g") as client:
        for path, body, headers in BODIES:
            response = await client.post(path, content=body, headers=headers)
            found.append((response.status_code, response.content))
    return found


def counted(metrics: CollectorRegistry, parsed_in: str) -> float | None:
    return metrics.get_sample_value("gateway_large_bodies_total", {"parsed_in": parsed_in})


async def test_large_bodies_parsed_in_a_process_answer_as_on_a_thread(
    demo_registry: Path,
) -> None:
    async with started(demo_registry, 0) as (app, metrics):
        assert app.parse_pool is None  # 0: today's path, worker threads
        on_threads = await answers(app)
        assert counted(metrics, "thread") == 2 * len(BODIES)
    async with started(demo_registry, 1) as (app, metrics):
        assert app.parse_pool is not None
        await app.parse_pool.started()
        in_processes = await answers(app)
        assert counted(metrics, "process") == 2 * len(BODIES)
        assert counted(metrics, "thread") is None
    assert in_processes == on_threads
    statuses = [status for status, _ in on_threads[: len(BODIES)]]
    assert statuses == [200, 200, 400, 400, 400, 400, 400, 400, 400, 400, 200, 400, 400, 400, 400]
    errors = [orjson.loads(body).get("error") for _, body in on_threads[: len(BODIES)]]
    assert errors[2].startswith("request body is not valid JSON")
    assert errors[3] == "input 'input': FP32 data holds str values ('0.5'); send JSON numbers"
    assert errors[4].startswith(
        "input 'input' holds NaN or infinite values, the first at index [1234, 5]"
    )
    assert "instances[1234] feature 'mean compactness'" in errors[12]
    big, zipped, rows = (orjson.loads(on_threads[i][1]) for i in (0, 1, 10))
    assert (big["id"], zipped["id"], rows["id"]) == ("big", "zipped", "rows")
    labels = [p["label"] for p in rows["predictions"]]
    assert big["outputs"][0]["data"] == labels
    assert len(labels) == len(ROWS)
    assert labels[0] == 0  # the first row of the dataset is malignant


async def infer(app: GatewayApp, body: bytes) -> tuple[int, dict[str, Any], bytes]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://g") as client:
        response = await client.post(INFER, content=body)
    return response.status_code, response.json(), response.headers.get("retry-after", "")


async def test_the_pool_starts_at_the_first_large_body(demo_registry: Path) -> None:
    before = set(children_of(os.getpid()))
    async with started(demo_registry, 1) as (app, metrics):
        small = tensor(ROWS[:10])
        for _ in range(3):
            assert (await infer(app, small))[0] == 200
        assert not set(children_of(os.getpid())) - before  # no body large enough: no process
        status, doc, _ = await infer(app, tensor(ROWS, id="first"))
        assert (status, doc["id"]) == (200, "first")
        assert counted(metrics, "thread") == 1  # while its process starts: on a thread
        assert app.parse_pool is not None
        (pid,) = await app.parse_pool.started()
        assert pid in set(children_of(os.getpid()))
        status, doc, _ = await infer(app, tensor(ROWS, id="second"))
        assert (status, doc["id"]) == (200, "second")
        assert counted(metrics, "process") == 1


async def test_a_killed_parse_process_answers_503_and_is_replaced(demo_registry: Path) -> None:
    async with started(demo_registry, 1) as (app, metrics):
        assert app.parse_pool is not None
        (pid,) = await app.parse_pool.started()
        os.kill(pid, signal.SIGSTOP)  # it takes the body, and parses nothing
        protocol, transport = connection_to(app, HttpLimits())
        body = tensor(ROWS)
        head = b"POST %s HTTP/1.1\r\nHost: t\r\ncontent-length: %d\r\n\r\n"
        protocol.data_received(head % (INFER.encode(), len(body)) + body)
        os.kill(pid, signal.SIGKILL)
        await answered(transport, 1)
        assert transport.written.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1\r\n" in transport.written.lower()
        assert transport.written.endswith(
            b'{"error":"the process parsing the request body ended before it finished '
            b'(killed, or out of memory); send the request again"}'
        )
        (new,) = await app.parse_pool.started()
        assert new != pid
        assert metrics.get_sample_value("gateway_parse_processes_lost_total") == 1
        status, doc, _ = await infer(app, tensor(ROWS, id="after"))
        assert (status, doc["id"]) == (200, "after")
        assert counted(metrics, "process") == 2
