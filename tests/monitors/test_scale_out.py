"""Three monitor instances, each with its own state directory (as on three machines), partitions
moved between them by joins, a SIGKILL mid-window and a leave: the windows they evaluate and the
drift decisions they send are exactly those of one uninterrupted pass over the same records.

Partial windows, decision state and undelivered events travel in the changelog topic; the
changelog's message limit is set to its minimum so that the snapshots are written in chunks.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from monitors.broker import EmbeddedBroker, create_topics
from monitors.decision import Decider
from monitors.evaluate import DetectorConfig, evaluate
from monitors.profile import load_profile
from monitors.schema import InferenceRecord
from monitors.windows import Windows, WindowSpec
from tests._support import free_port
from tests.monitors._records import NAMES, X
from tests.monitors.test_monitor_e2e import Receiver
from tests.monitors.test_restart import MODEL, TOPIC, WINDOW, monitor, produce

pytestmark = pytest.mark.e2e

MODELS = [MODEL, "bc_b", "bc_c"]  # one per partition
GROUP = "drift-monitor"
CONSECUTIVE, COOLDOWN = 2, 3


def make_records(start: int, count: int, model: str, shift: float) -> list[InferenceRecord]:
    """Single-row records, every third served by version 2; ``shift``: sigmas added to two
    features (a drift)."""
    rng = np.random.default_rng(start * 7 + len(model))
    rows = X[rng.integers(0, len(X), count)].copy()
    rows[:, :2] += shift * X[:, :2].std(axis=0)
    return [
        {
            "schema_version": 2, "request_id": f"{model}{start + i}", "time": 1000.0 + start + i,
            "endpoint": model, "model": model, "version": "2" if (start + i) % 3 == 2 else "1",
            "variant": "default", "role": "primary", "rows": 1, "status": "ok",
            "latency_s": 0.001, "features": {n: [float(row[j])] for j, n in enumerate(NAMES)},
            "outputs": {"label": [int(row[0] > 14)]},
        }
        for i, row in enumerate(rows.astype(np.float32))
    ]  # fmt: skip


def one_pass(
    registry: Path, model: str, partition: int, records: list[InferenceRecord]
) -> tuple[list[tuple[str, int, str]], set[str]]:
    """The windows (id, rows, fingerprint) and the ids of the windows that fire a drift
    decision, of one uninterrupted pass over a model's records."""
    windows_seen, fired = [], set()
    decider = Decider(CONSECUTIVE, COOLDOWN)
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
            windows_seen.append((window_id, result.rows, result.fingerprint()))
            if decider.observe(f"{model}/{version}", result.status):
                fired.add(window_id)
    return windows_seen, fired


def write_config(path: Path, broker: EmbeddedBroker, registry: Path, hook: str) -> int:
    port = free_port()
    config = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers,
            "topic": TOPIC,
            "group_id": GROUP,
            "session_timeout_s": 2.0,  # the killed instance leaves the group sooner
            "heartbeat_interval_s": 0.5,
            "changelog": {"max_message_bytes": 4096},  # the minimum: snapshots take chunks
        },
        "registry_root": str(registry),
        "state_dir": str(path.parent / f"state-{path.stem}"),
        "window": {"by": "count", "size": WINDOW, "slide": WINDOW},
        "decision": {"consecutive": CONSECUTIVE, "cooldown_windows": COOLDOWN},
        "webhooks": [{"name": "hook", "url": hook, "secret": "s"}],
        "webhook_backoff_s": 0.05,
        "http": {"port": port},
    }
    path.write_text(yaml.safe_dump(config))
    return port


def metric(port: int, line_start: str) -> float:
    """The sum of the samples whose line starts with ``line_start``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line_start))


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assigned(ports: list[int]) -> list[float]:
    return [metric(p, "monitor_assigned_partitions") for p in ports]


def spread_over(ports: list[int]) -> Callable[[], bool]:
    """Every partition assigned, and every instance given at least one."""

    def check() -> bool:
        counts = assigned(ports)
        return sum(counts) == len(MODELS) and min(counts) >= 1

    return check


async def _committed(bootstrap: str) -> list[int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP)
    await consumer.start()
    try:
        return [await consumer.committed(TopicPartition(TOPIC, p)) for p in range(len(MODELS))]
    finally:
        await consumer.stop()


def audit(tmp_path: Path) -> list[tuple[str, int, str]]:
    entries = []
    for path in tmp_path.glob("state-*/windows.jsonl"):
        for line in path.read_text().splitlines():
            e = json.loads(line)
            entries.append((e["window_id"], e["rows"], e["fingerprint"]))
    return sorted(entries)


def fired(receiver: Receiver) -> set[str]:
    return {json.loads(body)["data"]["window"]["id"] for _, body, _ in receiver.requests}


def test_three_instances_with_their_own_directories_evaluate_as_one_pass(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    for name in MODELS[1:]:
        shutil.copytree(demo_registry / MODEL, demo_registry / name)
    asyncio.run(create_topics(broker.bootstrap_servers, [TOPIC], partitions=len(MODELS)))
    bootstrap = broker.bootstrap_servers
    # (records per model, drift shift): window boundaries fall inside messages and phases
    phases = [(600, 0.0), (500, 3.0), (500, 3.0), (500, 0.0), (400, 3.0)]
    produced: dict[str, list[InferenceRecord]] = {m: [] for m in MODELS}
    messages = [0] * len(MODELS)

    def phase(index: int) -> None:
        count, shift = phases[index]
        start = sum(c for c, _ in phases[:index])
        for partition, model in enumerate(MODELS):
            records = make_records(start, count, model, shift)
            produced[model] += records
            asyncio.run(produce(bootstrap, records, partition))
            messages[partition] += -(-count // 100)
        # every record consumed, its windows snapshotted and its offset committed
        wait_until(lambda: asyncio.run(_committed(bootstrap)) == messages, "the commits")

    with Receiver(fail_first=0) as receiver:
        hook = receiver.url
        ports = {
            n: write_config(tmp_path / f"{n}.yaml", broker, demo_registry, hook) for n in "abc"
        }
        logs = {n: tmp_path / f"{n}.log" for n in "abc"}
        with monitor(tmp_path / "a.yaml", ports["a"], logs["a"]) as a:
            phase(0)
            with monitor(tmp_path / "b.yaml", ports["b"], logs["b"]) as b:
                wait_until(spread_over([ports["a"], ports["b"]]), "B to join")
                phase(1)
                with monitor(tmp_path / "c.yaml", ports["c"], logs["c"]):
                    wait_until(spread_over([ports["a"], ports["b"], ports["c"]]), "C to join")
                    phase(2)
                    b.send_signal(signal.SIGKILL)  # its windows are half full
                    b.wait()
                    wait_until(spread_over([ports["a"], ports["c"]]), "B's partitions to move")
                    phase(3)
                    a.send_signal(signal.SIGTERM)  # leaves the group
                    a.wait()
                    wait_until(spread_over([ports["c"]]), "A's partitions to move")
                    phase(4)
                    from_changelog = metric(
                        ports["c"], 'monitor_state_restores_total{outcome="changelog"}'
                    )
                    chunked = metric(ports["c"], 'monitor_changelog_writes_total{layout="chunked"}')
                    expected_windows, expected_fired = [], set()
                    for partition, model in enumerate(MODELS):
                        windows, fires = one_pass(demo_registry, model, partition, produced[model])
                        expected_windows += windows
                        expected_fired |= fires
                    wait_until(lambda: fired(receiver) >= expected_fired, "the webhooks")
    assert a.returncode == 0
    assert from_changelog >= 2, "C took partitions on from the changelog, not its own cache"
    assert chunked > 0
    assert len(expected_fired) >= 3, "the drift decisions straddle the moves"
    assert audit(tmp_path) == sorted(expected_windows), "each window evaluated once, exactly"
    assert fired(receiver) == expected_fired


async def _rewind(bootstrap: str, offset: int) -> None:
    """Commit an earlier offset for partition 0, as a member of the (otherwise empty) group."""
    consumer = AIOKafkaConsumer(
        TOPIC, bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(TOPIC, 0)
        deadline = time.monotonic() + 60
        while tp not in consumer.assignment() and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=200)
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


def test_a_snapshot_ahead_of_the_commit_is_read_on_from_its_own_offset(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """An instance that died between its snapshot and its commit: the next owner, on another
    machine, neither reads the snapshot's records again nor loses its partial windows."""
    bootstrap = broker.bootstrap_servers
    asyncio.run(create_topics(bootstrap, [TOPIC], partitions=1))
    first, second = make_records(0, 650, MODEL, 0.0), make_records(650, 600, MODEL, 0.0)

    def committed() -> int | None:
        return asyncio.run(_committed(bootstrap))[0]

    with Receiver(fail_first=0) as receiver:
        port_a = write_config(tmp_path / "a.yaml", broker, demo_registry, receiver.url)
        port_b = write_config(tmp_path / "b.yaml", broker, demo_registry, receiver.url)
        with monitor(tmp_path / "a.yaml", port_a, tmp_path / "a.log"):
            asyncio.run(produce(bootstrap, first, 0))
            wait_until(lambda: committed() == 7, "A's commit")
        # As if A had died after its snapshot of offset 7 but before committing it.
        asyncio.run(_rewind(bootstrap, 3))
        assert committed() == 3
        with monitor(tmp_path / "b.yaml", port_b, tmp_path / "b.log"):
            asyncio.run(produce(bootstrap, second, 0))
            wait_until(lambda: committed() == 13, "B's commit")
            restores = metric(port_b, 'monitor_state_restores_total{outcome="changelog"}')
    assert restores == 1
    expected, _ = one_pass(demo_registry, MODEL, 0, first + second)
    assert audit(tmp_path) == sorted(expected)
