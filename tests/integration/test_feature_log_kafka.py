"""End-to-end: the gateway process logs every request to a real Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import socket
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_breast_cancer

from gateway.featurelog.spool import Spool
from monitors.broker import EmbeddedBroker, create_topics
from monitors.schema import InferenceRecord, decode_records
from tests._kafka import read_records
from tests._support import free_port, start_gateway
from tests.integration.test_server import read_by_server, wait_until

pytestmark = pytest.mark.e2e

DATA = load_breast_cancer()
X = DATA.data.astype(np.float32)
NAMES = [str(n) for n in DATA.feature_names]
TOPIC = "inference-log"


def config(registry: Path, bootstrap: str, spool: Path) -> dict[str, Any]:
    return {
        "registry": {"backend": "local", "root": str(registry)},
        "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
        "feature_log": {
            "enabled": True,
            "bootstrap_servers": bootstrap,
            "topic": TOPIC,
            "spool_dir": str(spool),
            "timeout_s": 2.0,
            "linger_s": 0.01,
        },
    }


async def send_requests(url: str, ids: range, concurrency: int = 16) -> dict[int, int]:
    """POST one single-row request per id (row ``id % len(X)``), ``concurrency`` at a time."""
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in ids:
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            row = X[i % len(X)].tolist()
            body = {"id": f"req-{i}", "inputs": [
                {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]}  # fmt: skip
            response = await client.post(url, json=body)
            statuses[i] = response.status_code

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


def SESSION(registry: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(registry / "breast_cancer" / "1" / "model.onnx"))


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


def infer_url(base: str) -> str:
    return f"{base}/v2/models/breast_cancer/infer"


def by_id(records: list[InferenceRecord]) -> dict[str, InferenceRecord]:
    return {r["request_id"]: r for r in records}


def test_every_request_is_logged_exactly_once_with_features_and_outputs(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    n = 3000
    with start_gateway(
        tmp_path, config(demo_registry, broker.bootstrap_servers, tmp_path / "spool")
    ) as gw:
        statuses = asyncio.run(send_requests(infer_url(gw.url), range(n)))
        bad = httpx.post(infer_url(gw.url), json={"id": "bad-1", "inputs": [
            {"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]})  # fmt: skip
        assert bad.status_code == 400
        records = read_records(broker.bootstrap_servers, TOPIC, n + 1)
        metrics = httpx.get(f"{gw.url}/metrics").text
    assert set(statuses.values()) == {200}
    ids = [r["request_id"] for r in records]
    assert len(ids) == len(set(ids)) == n + 1, "none missing, none doubled"
    assert set(ids) == {f"req-{i}" for i in range(n)} | {"bad-1"}
    indexed = by_id(records)
    for i in (0, 1, 17, n - 1):
        record = indexed[f"req-{i}"]
        assert record["model"] == "breast_cancer"
        assert record["version"] == "1"
        assert record["role"] == "primary"
        assert record["status"] == "ok"
        assert record["rows"] == 1
        assert set(record["features"]) == set(NAMES)
        for j, name in enumerate(NAMES):
            assert record["features"][name] == pytest.approx([X[i % len(X), j]], rel=1e-6)
        label, probabilities = SESSION(demo_registry).run(None, {"input": X[i % len(X)][None]})
        assert record["outputs"]["label"] == label.tolist()
        # the gateway ran the row inside a batch: float32 sums in another order differ in the
        # last bits, which for a probability near 0 is more than a relative 1e-5
        assert np.allclose(record["outputs"]["probabilities"], probabilities, rtol=1e-5, atol=1e-6)
        assert record["latency_s"] > 0
    rejected = indexed["bad-1"]
    assert rejected["status"] == "invalid"
    assert "shape [1, 2]" in (rejected.get("error") or "")
    assert 'gateway_feature_log_records_total{event="produced"} 3001.0' in metrics


def test_broker_outage_loses_nothing_and_keeps_order(demo_registry: Path, tmp_path: Path) -> None:
    first = EmbeddedBroker()
    first.start()
    port = first.port
    asyncio.run(create_topics(first.bootstrap_servers, [TOPIC], partitions=3))
    with start_gateway(
        tmp_path, config(demo_registry, first.bootstrap_servers, tmp_path / "spool")
    ) as gw:
        url = infer_url(gw.url)
        before = asyncio.run(send_requests(url, range(0, 500)))
        logged_before = read_records(first.bootstrap_servers, TOPIC, 500, settle_s=0.2)
        first.stop()  # the broker dies with everything it held in memory

        started = time.monotonic()
        during = asyncio.run(send_requests(url, range(500, 1500)))
        outage_s = time.monotonic() - started
        # The producer notices the outage after its timeout; then the backlog goes to disk.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metrics = httpx.get(f"{gw.url}/metrics").text
            if metric(metrics, "gateway_feature_log_queue_depth") == 0 and metric(
                metrics, "gateway_feature_log_spool_messages"
            ):
                break
            time.sleep(0.2)
        assert metric(metrics, 'gateway_feature_log_records_total{event="spooled"}') > 0

        second = EmbeddedBroker(port=port)
        second.start()
        try:
            asyncio.run(create_topics(second.bootstrap_servers, [TOPIC], partitions=3))
            after = asyncio.run(send_requests(url, range(1500, 1800)))
            logged_after = read_records(second.bootstrap_servers, TOPIC, 1300, timeout_s=90)
            metrics = httpx.get(f"{gw.url}/metrics").text
        finally:
            second.stop()
    statuses = {**before, **during, **after}
    assert set(statuses.values()) == {200}, "every request answered normally during the outage"
    assert outage_s < 30
    got = [r["request_id"] for r in logged_before + logged_after]
    assert set(got) == {f"req-{i}" for i in range(1800)}, "every record reached the topic"
    assert metric(metrics, 'gateway_feature_log_records_total{event="replayed"}') > 0
    assert metric(metrics, "gateway_feature_log_spool_messages") == 0
    # Order per model: the model's records sit in one partition; requests sent one batch of
    # concurrent callers at a time are logged in the order they were answered.
    per_model: dict[str, list[float]] = defaultdict(list)
    first_seen: set[str] = set()
    for record in logged_after:
        if record["request_id"] not in first_seen:
            first_seen.add(record["request_id"])
            per_model[record["model"]].append(record["time"])
    times = per_model["breast_cancer"]
    late = sum(1 for a, b in itertools.pairwise(times) if b < a - 0.1)
    assert late == 0, "records replayed out of order"


def test_restart_with_a_non_empty_spool_replays_it(demo_registry: Path, tmp_path: Path) -> None:
    broker = EmbeddedBroker()
    spool = tmp_path / "spool"
    cfg = config(demo_registry, broker.bootstrap_servers, spool)  # nothing listens there yet
    with start_gateway(tmp_path, cfg) as gw:
        statuses = asyncio.run(send_requests(infer_url(gw.url), range(300)))
    assert set(statuses.values()) == {200}
    assert any(spool.glob("*.seg")), "records waited on disk while the gateway was down"
    with broker:
        asyncio.run(create_topics(broker.bootstrap_servers, [TOPIC], partitions=3))
        with start_gateway(tmp_path, cfg):
            records = read_records(broker.bootstrap_servers, TOPIC, 300, timeout_s=90)
    assert {r["request_id"] for r in records} == {f"req-{i}" for i in range(300)}


def test_a_second_ctrl_c_with_a_hung_broker_spools_every_record(
    demo_registry: Path, tmp_path: Path
) -> None:
    # The "broker" takes connections and never answers, so the records of answered requests
    # wait in the log's queue (and in its sender's hands). A request waits in a batch that
    # closes only on shutdown. Ctrl-C, then Ctrl-C again while uvicorn waits for that
    # connection (a forced quit: the queued request is refused 503, as uvicorn does). Before,
    # the records the log's sender held when the shutdown deadline cut its send were lost,
    # neither sent nor spooled (16 of 21 here).
    spool, port = tmp_path / "spool", free_port()
    cfg = config(demo_registry, f"127.0.0.1:{port}", spool)
    cfg["feature_log"] |= {"create_topic": False, "timeout_s": 60.0}
    cfg["server"] = {"shutdown_timeout_s": 2}
    slow = {"max_batch_delay_s": 120.0, "close_when_idle": False, "timeout_s": 300.0}
    cfg["models"].append({"name": "slow", "ref": "breast_cancer@champion", "batching": slow})
    # nothing listens there as the gateway starts, so it starts at once; then the hung broker
    with start_gateway(tmp_path, cfg) as gw, socket.create_server(("127.0.0.1", port)):
        statuses = asyncio.run(send_requests(infer_url(gw.url), range(20)))
        body = json.dumps({"id": "queued", "inputs": [{"name": "input", "shape": [1, 30],
                           "datatype": "FP32", "data": X[0].tolist()}]})  # fmt: skip
        queued = socket.create_connection(("127.0.0.1", gw.port), timeout=60)
        queued.sendall(
            f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
            f"\r\n\r\n{body}".encode()
        )
        wait_until(lambda: read_by_server(gw.port, [queued]), "the request read")
        gw.proc.send_signal(signal.SIGINT)
        wait_until(lambda: "Waiting for connections" in gw.log(), "the first Ctrl-C")
        gw.proc.send_signal(signal.SIGINT)
        with queued, queued.makefile("rb") as answer:
            status = answer.readline()
        gw.proc.wait(60)
    assert set(statuses.values()) == {200}
    spooled = Spool(spool, max_bytes=1 << 30).read(1000)
    ids = [r["request_id"] for entry in spooled for r in decode_records(entry.value)]
    assert sorted(ids) == sorted([f"req-{i}" for i in range(20)] + ["queued"])
    assert status.startswith(b"HTTP/1.1 503"), status  # answered, never dropped


def test_a_restart_with_workers_replays_what_one_process_spooled(
    demo_registry: Path, tmp_path: Path
) -> None:
    # One process spools in spool_dir, worker K of `--workers N` in spool_dir/worker-K. Before,
    # a restart with workers never looked in spool_dir: the records stayed there, never sent.
    broker = EmbeddedBroker()
    spool = tmp_path / "spool"
    cfg = config(demo_registry, broker.bootstrap_servers, spool)  # nothing listens there yet
    with start_gateway(tmp_path, cfg) as gw:
        statuses = asyncio.run(send_requests(infer_url(gw.url), range(200)))
    assert set(statuses.values()) == {200}
    assert Spool(spool, max_bytes=1 << 30).pending_records > 0
    cfg["server"] = {"workers": 2}
    with broker:
        asyncio.run(create_topics(broker.bootstrap_servers, [TOPIC], partitions=3))
        with start_gateway(tmp_path, cfg):
            records = read_records(broker.bootstrap_servers, TOPIC, 200, timeout_s=90)
    assert {r["request_id"] for r in records} == {f"req-{i}" for i in range(200)}
