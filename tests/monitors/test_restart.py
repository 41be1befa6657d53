"""A monitor killed mid-window and restarted counts every record in exactly one window.

Records are written as the gateway writes them (100 per Kafka message, as columns, two versions
of the model interleaved in the same messages), so window boundaries fall inside messages; the
monitor is killed with SIGKILL while both versions have a window half full. The windows it
evaluates over its two lives are the windows of one uninterrupted pass over the same records.
Before the kill the records come as version 1 lines, as from a gateway not yet upgraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from monitors.broker import EmbeddedBroker, create_topics
from monitors.evaluate import DetectorConfig, evaluate
from monitors.profile import load_profile
from monitors.schema import InferenceRecord, encode_record, encode_records
from monitors.windows import Windows, WindowSpec
from tests._support import free_port, running_process
from tests.monitors._records import NAMES, X

pytestmark = pytest.mark.e2e

MODEL = "breast_cancer"
TOPIC = "inference-log"
WINDOW = 240  # not a multiple of the 100 records of a message


def make_records(start: int, count: int, model: str = MODEL) -> list[InferenceRecord]:
    """Single-row records; every third is served by version 2."""
    rng = np.random.default_rng(start + len(model))
    rows = X[rng.integers(0, len(X), count)].astype(np.float32)
    return [
        {
            "schema_version": 2, "request_id": f"{model}{start + i}", "time": 1000.0 + start + i,
            "endpoint": model, "model": model, "version": "2" if (start + i) % 3 == 2 else "1",
            "variant": "default", "role": "primary", "rows": 1, "status": "ok",
            "latency_s": 0.001, "features": {n: [float(row[j])] for j, n in enumerate(NAMES)},
            "outputs": {"label": [int(row[0] > 14)]},
        }
        for i, row in enumerate(rows)
    ]  # fmt: skip


def lines(records: list[InferenceRecord]) -> bytes:
    """A message as version 1 gateways wrote it: a record per line."""
    return b"\n".join(encode_record({**r, "schema_version": 1}) for r in records)


async def produce(
    bootstrap: str,
    records: list[InferenceRecord],
    partition: int | None = None,
    encode: Callable[[list[InferenceRecord]], bytes] = encode_records,
) -> None:
    """As the gateway's feature log does: 100 records per message, keyed by model."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for start in range(0, len(records), 100):
            chunk = records[start : start + 100]
            value = encode(chunk)
            key = chunk[0]["model"].encode()
            await producer.send_and_wait(TOPIC, value, key=key, partition=partition)
    finally:
        await producer.stop()


@contextlib.contextmanager
def monitor(config_path: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "monitors", "run", "--config", str(config_path)]
    with running_process(command, log, f"http://127.0.0.1:{port}/health") as proc:
        yield proc


def audited(state: Path, count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    path = state / "windows.jsonl"
    deadline = time.monotonic() + timeout_s
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        entries = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        if len(entries) >= count:
            return entries
        time.sleep(0.2)
    raise AssertionError(f"{len(entries)} of {count} windows evaluated")


def uninterrupted(
    registry: Path, records: list[InferenceRecord], model: str = MODEL, partition: int = 0
) -> list[tuple[str, int, str]]:
    """(window id, rows, fingerprint) of one pass over a model's records without a restart."""
    expected = []
    for version in ("1", "2"):
        profile = load_profile(registry / model / version)
        assert profile is not None
        mine: list[dict[str, Any]] = [dict(r) for r in records if r["version"] == version]
        windows = Windows(WindowSpec("count", WINDOW, WINDOW), profile)
        for sequence, (panes, summary) in enumerate(windows.add(mine, [0] * len(mine)), 1):
            window_id = f"{model}/{version}/p{partition}/{sequence}"
            result = evaluate(
                summary, profile, DetectorConfig(), model=model, version=version,
                window_id=window_id, start_time=panes[0].start_time, end_time=panes[-1].end_time,
            )  # fmt: skip
            expected.append((window_id, result.rows, result.fingerprint()))
    return sorted(expected)


def wait_metric(port: int, name: str, at_least: float, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    value = 0.0
    while time.monotonic() < deadline:
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
            if line.startswith(name + " "):
                value = float(line.split()[1])
        if value >= at_least:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} stayed at {value}")


def write_config(
    path: Path, broker: EmbeddedBroker, registry: Path, state: Path, **settings: Any
) -> int:
    port = free_port()
    config = {
        **settings,
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers,
            "topic": TOPIC,
            "session_timeout_s": 2.0,  # the killed instance leaves the group sooner
            "heartbeat_interval_s": 0.5,
        },
        "registry_root": str(registry),
        "state_dir": str(state),
        "window": {"by": "count", "size": WINDOW, "slide": WINDOW},
        "http": {"port": port},
    }
    path.write_text(yaml.safe_dump(config))
    return port


def test_killed_monitor_resumes_without_losing_or_doubling_records(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    asyncio.run(create_topics(broker.bootstrap_servers, [TOPIC], partitions=1))
    state = tmp_path / "state"
    config = tmp_path / "monitor.yaml"
    port = write_config(config, broker, demo_registry, state)
    first, second = make_records(0, 1150), make_records(1150, 1250)
    with monitor(config, port, tmp_path / "monitor.log") as proc:
        asyncio.run(produce(broker.bootstrap_servers, first, encode=lines))
        audited(state, 4)  # version 1: 3 windows and 47 rows pending; version 2: 1 and 143
        time.sleep(1.5)  # past the snapshot and the commit of the last batch
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with monitor(config, port, tmp_path / "monitor.log"):
        asyncio.run(produce(broker.bootstrap_servers, second))
        entries = audited(state, 9)
        time.sleep(1.0)  # a window evaluated twice would show up meanwhile
        entries = audited(state, 9)
    got = sorted((e["window_id"], e["rows"], e["fingerprint"]) for e in entries)
    assert got == uninterrupted(demo_registry, first + second)


def test_an_instance_joining_the_group_takes_partitions_over_exactly(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    models = [MODEL, "bc_b", "bc_c"]  # one per partition, all with the demo model's profile
    for name in models[1:]:
        shutil.copytree(demo_registry / MODEL, demo_registry / name)
    asyncio.run(create_topics(broker.bootstrap_servers, [TOPIC], partitions=3))
    state = tmp_path / "state"  # shared by both instances
    port_a = write_config(tmp_path / "a.yaml", broker, demo_registry, state)
    port_b = write_config(tmp_path / "b.yaml", broker, demo_registry, state)
    first = {m: make_records(0, 700, m) for m in models}
    second = {m: make_records(700, 1300, m) for m in models}
    with monitor(tmp_path / "a.yaml", port_a, tmp_path / "a.log"):
        for partition, model in enumerate(models):
            asyncio.run(produce(broker.bootstrap_servers, first[model], partition))
        audited(state, 3)  # one window of version 1 per model; both versions have rows pending
        time.sleep(1.5)
        with monitor(tmp_path / "b.yaml", port_b, tmp_path / "b.log"):
            # B joins the group: the partitions it is given move with their window state.
            wait_metric(port_b, "monitor_assigned_partitions", 1.0)
            for partition, model in enumerate(models):
                asyncio.run(produce(broker.bootstrap_servers, second[model], partition))
            entries = audited(state, 21)
            time.sleep(1.0)
            entries = audited(state, 21)
            metrics = httpx.get(f"http://127.0.0.1:{port_b}/metrics").text
    # the directory is shared: B finds the changelog's latest snapshot in A's cache
    assert 'monitor_state_restores_total{outcome="cache"}' in metrics, "B took a partition on"
    got = sorted((e["window_id"], e["rows"], e["fingerprint"]) for e in entries)
    expected = sorted(
        window
        for partition, model in enumerate(models)
        for window in uninterrupted(demo_registry, first[model] + second[model], model, partition)
    )
    assert got == expected


def test_a_monitor_whose_broker_is_gone_stops_within_its_shutdown_budget(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    # SIGTERM with the broker gone: the last snapshots' writes and the consumer's goodbye
    # waited for Kafka's timeouts (the changelog's 60 s), past a pod's 30 s grace period, and
    # the stack's own parts outlived it. Now the Kafka part of the exit has its own budget.
    asyncio.run(create_topics(broker.bootstrap_servers, [TOPIC], partitions=1))
    state = tmp_path / "state"
    config = tmp_path / "monitor.yaml"
    port = write_config(config, broker, demo_registry, state, shutdown_timeout_s=2.0)
    log = tmp_path / "monitor.log"
    with monitor(config, port, log) as proc:
        asyncio.run(produce(broker.bootstrap_servers, make_records(0, 600)))
        audited(state, 1)  # it has consumed, so it has snapshots to write at the end
        broker.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("the monitor was still stopping 30 s after SIGTERM") from None
    assert code == 0, log.read_text()[-2000:]
