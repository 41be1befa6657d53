"""Large JSON bodies parsed in parse processes (``server.parse_processes``): the same answers
and errors as on a worker thread, a pool started lazily, one that outlives a killed process
and loses no request to it (but refuses a body that kills two), and light processes."""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_breast_cancer

from gateway._parse_process import parse_in_process
from gateway.http import create_app, endpoints
from gateway.http._limits import HttpLimits
from gateway.http._parse_pool import ParsePool
from gateway.http.app import GatewayApp
from gateway.http.endpoints import LARGE_BODY_BYTES
from gateway.settings import load_settings
from tests._support import children_of, wait_for
from tests.gateway.http._parse_faults import KILLER_ID, answer_half_then_die, parse_or_die
from tests.gateway.http.test_protocol import answered, connection_to

DATA = load_breast_cancer()
NAMES = [str(n) for n in DATA.feature_names]
ROWS: list[list[Any]] = np.tile(DATA.data.astype(np.float32), (4, 1)).tolist()  # 2,276 rows
INFER = "/v2/models/breast_cancer/infer"
PREDICT = "/v1/models/breast_cancer:predict"


@asynccontextmanager
async def started(
    registry: Path, processes: int, **model: Any
) -> AsyncIterator[tuple[GatewayApp, Any]]:
    """The demo model's app, lifespan running, and its metrics registry."""
    settings = load_settings(
        registry__root=registry,
        registry__poll_interval_s=60,
        models=[{"name": "breast_cancer", "ref": "breast_cancer@champion", **model}],
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


async def infer(app: GatewayApp, body: bytes) -> tuple[int, dict[str, Any], str]:
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


def send(app: GatewayApp, body: bytes) -> Any:
    """``body`` to /infer through the gateway's own protocol, at once (a large body is handed
    to the parse pool before this returns); the transport the answer is written to."""
    protocol, transport = connection_to(app, HttpLimits())
    head = b"POST %s HTTP/1.1\r\nHost: t\r\ncontent-length: %d\r\n\r\n"
    protocol.data_received(head % (INFER.encode(), len(body)) + body)
    return transport


def lost(metrics: CollectorRegistry) -> float | None:
    return metrics.get_sample_value("gateway_parse_processes_lost_total")


async def test_a_parse_lost_with_its_process_is_parsed_again_in_a_new_one(
    demo_registry: Path,
) -> None:
    async with started(demo_registry, 1) as (app, metrics):
        assert app.parse_pool is not None
        (pid,) = await app.parse_pool.started()
        # Stopped, the process is as good as dead to the pool, which cannot tell: it hands it
        # the body, then the process dies without having parsed it (the race of a process
        # killed while idle, before the pool notices, made certain).
        os.kill(pid, signal.SIGSTOP)
        transport = send(app, tensor(ROWS, id="lost once"))
        os.kill(pid, signal.SIGKILL)
        await answered(transport, 1)
        assert transport.written.startswith(b"HTTP/1.1 200 "), transport.written[:300]
        assert b'"id":"lost once"' in transport.written
        (new,) = await app.parse_pool.started()
        assert new != pid
        assert lost(metrics) == 1
        assert counted(metrics, "thread") is None  # parsed again in a process, not on a thread
        status, doc, _ = await infer(app, tensor(ROWS, id="after"))
        assert (status, doc["id"]) == (200, "after")
        assert counted(metrics, "process") == 2


async def test_a_process_killed_while_idle_costs_no_request(demo_registry: Path) -> None:
    async with started(demo_registry, 1) as (app, metrics):
        assert app.parse_pool is not None
        for round in (1, 2):
            (pid,) = await app.parse_pool.started()
            os.kill(pid, signal.SIGKILL)
            # at once: the pool may or may not have noticed; either way the body is answered
            transport = send(app, tensor(ROWS, id=f"round {round}"))
            await answered(transport, 1)
            assert transport.written.startswith(b"HTTP/1.1 200 "), transport.written[:300]
            assert b'"id":"round %d"' % round in transport.written
            assert lost(metrics) == round


async def test_a_body_that_kills_its_process_every_time_is_refused_after_two(
    demo_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoints, "parse_in_process", parse_or_die)
    async with started(demo_registry, 1) as (app, metrics):
        assert app.parse_pool is not None
        (first,) = await app.parse_pool.started()
        transport = send(app, tensor(ROWS, id=KILLER_ID))
        await answered(transport, 1)
        assert transport.written.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1\r\n" in transport.written.lower()
        assert transport.written.endswith(
            b'{"error":"the process parsing the request body ended before it finished, twice '
            b'(killed, or out of memory); send the request again"}'
        )
        assert lost(metrics) == 2  # its process, then the one that replaced it
        assert counted(metrics, "thread") is None  # never parsed in the gateway's process
        (third,) = await app.parse_pool.started()
        assert third != first
        assert first not in children_of(os.getpid())
        status, doc, _ = await infer(app, tensor(ROWS, id="still serving"))
        assert (status, doc["id"]) == (200, "still serving")
        assert counted(metrics, "process") == 2
        assert lost(metrics) == 2


async def test_a_parse_process_imports_neither_onnxruntime_nor_the_server(
    demo_registry: Path,
) -> None:
    async with started(demo_registry, 1) as (app, _):
        assert app.parse_pool is not None
        await app.parse_pool.started()
        assert (await infer(app, tensor(ROWS)))[0] == 200
        asgi = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=asgi, base_url="http://g") as client:
            assert (await client.post(PREDICT, content=instances(ROWS))).status_code == 200
        # both forms were parsed in the process: everything a parse needs is imported
        question = "sorted(m for m in __import__('sys').modules if '.' not in m)"
        asked = app.parse_pool.submit(eval, question)
        assert asked is not None
        imported = await asked
        assert {"gateway", "numpy", "orjson"} <= set(imported)
        for heavy in ("onnxruntime", "starlette", "aiokafka", "httpx", "uvicorn"):
            assert heavy not in imported


def test_the_gateway_command_loads_the_server_only_when_run() -> None:
    # A spawned process runs its parent's main script again: under the ``gateway`` command
    # that script imports gateway.cli, so a parse process imports what gateway.cli does.
    script = "import sys, gateway.cli; print(' '.join(sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, check=True)
    imported = set(done.stdout.decode().split())
    assert "gateway.cli" in imported
    for heavy in ("onnxruntime", "numpy", "starlette", "aiokafka", "pydantic", "gateway.serve"):
        assert heavy not in imported


async def test_a_parse_waiting_for_new_processes_is_cancelled_when_the_pool_closes() -> None:
    noticed = asyncio.Event()
    pool = ParsePool(1, on_lost=noticed.set)
    (pid,) = await pool.started()
    os.kill(pid, signal.SIGSTOP)
    parse = pool.submit(parse_in_process, b"{}", [], 100, orjson.loads)
    assert parse is not None
    os.kill(pid, signal.SIGKILL)
    await noticed.wait()  # new processes starting: the parse waits for them to send it again
    await pool.aclose()
    with pytest.raises(asyncio.CancelledError):  # the endpoint answers "the gateway is stopping"
        await parse
    assert pool.submit(parse_in_process, b"{}", [], 100, orjson.loads) is None


async def test_a_caller_gone_during_its_parse_leaves_no_error_behind(demo_registry: Path) -> None:
    # Over ASGI the request's task can be cancelled while its body is in a parse process; the
    # parse's answer then found the request's future cancelled and raised in a callback.
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        async with started(demo_registry, 1) as (app, metrics):
            assert app.parse_pool is not None
            (pid,) = await app.parse_pool.started()
            os.kill(pid, signal.SIGSTOP)  # the parse waits in the process until we go on
            try:
                call = asyncio.ensure_future(infer(app, tensor(ROWS, id="gone")))
                await wait_for(lambda: counted(metrics, "process") == 1)  # handed to the pool
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
            finally:
                os.kill(pid, signal.SIGCONT)
            # one process, in order: once this is answered, the first parse's answer came too
            status, doc, _ = await infer(app, tensor(ROWS, id="next"))
            assert (status, doc["id"]) == (200, "next")
    finally:
        loop.set_exception_handler(None)
    assert errors == []


async def test_a_parse_that_outlasts_the_deadline_still_names_an_invalid_body(
    demo_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A large body whose parse took longer than batching.timeout_s was answered 503 (send it
    # again) before its parse's outcome was looked at, even when the body could never succeed.
    timeout_s = 1.0
    prepare = endpoints.InferEndpoint._prepare

    def slow(self: Any, *args: Any) -> Any:
        begun = time.perf_counter()
        prepared = prepare(self, *args)
        while time.perf_counter() - begun <= timeout_s:  # the parse of a huge body, on a thread
            time.sleep(0.05)
        return prepared

    monkeypatch.setattr(endpoints.InferEndpoint, "_prepare", slow)
    settings = load_settings(
        registry__root=demo_registry,
        registry__poll_interval_s=60,
        models=[
            {
                "name": "breast_cancer",
                "ref": "breast_cancer@champion",
                "batching": {"timeout_s": timeout_s},
            }
        ],
        server={"parse_processes": 0},
    )
    app = create_app(settings, metrics_registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        status, doc, _ = await infer(app, tensor(with_cell("0.5")))
        assert (status, doc["error"]) == (
            400,
            "input 'input': FP32 data holds str values ('0.5'); send JSON numbers",
        )
        status, doc, retry = await infer(app, tensor(ROWS))
        assert (status, retry) == (503, "1")
        assert doc["error"] == (
            "model breast_cancer: the request's deadline passed while its body was parsed"
        )


@pytest.mark.parametrize("driver", ["protocol", "asgi"])
async def test_a_parse_that_never_comes_back_is_answered_at_its_deadline(
    demo_registry: Path, driver: str
) -> None:
    """A parse process that stops answering (stopped here; a process whose death the pool
    missed does the same) held the request, and its place at the gate, for ever."""
    async with started(demo_registry, 1, batching={"timeout_s": 0.5}) as (app, metrics):
        assert app.parse_pool is not None
        (pid,) = await app.parse_pool.started()
        os.kill(pid, signal.SIGSTOP)
        try:
            if driver == "protocol":
                transport = send(app, tensor(ROWS, id="stuck"))
                await asyncio.wait_for(answered(transport, 1), 10)
                assert transport.written.startswith(b"HTTP/1.1 503 "), transport.written[:300]
            else:
                status, doc, _ = await asyncio.wait_for(infer(app, tensor(ROWS, id="stuck")), 10)
                assert status == 503, doc
            assert counted(metrics, "process") == 1
            in_flight = metrics.get_sample_value(
                "gateway_admission_in_flight", {"model": "breast_cancer"}
            )
            assert in_flight == 0, "its place is given back"
        finally:
            os.kill(pid, signal.SIGCONT)


async def test_a_process_killed_while_it_sends_its_answer_does_not_stall_the_pool(
    tmp_path: Path,
) -> None:
    # The executor's thread, reading the answer, waits for the rest of it for ever, and never
    # finds the executor broken: the pool notices the process's end itself.
    lost_count = 0

    def noticed() -> None:
        nonlocal lost_count
        lost_count += 1

    pool = ParsePool(1, on_lost=noticed)
    try:
        (first,) = await pool.started()
        parse = pool.submit(answer_half_then_die, str(tmp_path / "died"))
        assert parse is not None
        second = await asyncio.wait_for(parse, 30)  # sent again, to the new process
        assert second != first
        assert lost_count == 1
        assert await pool.started() == [second]
        again = pool.submit(answer_half_then_die, str(tmp_path / "died"))
        assert again is not None
        assert await asyncio.wait_for(again, 30) == second
    finally:
        await pool.aclose()
