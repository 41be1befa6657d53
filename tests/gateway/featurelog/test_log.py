from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.featurelog.log import FeatureLog
from gateway.featurelog.spool import Spool
from gateway.metrics import FeatureLogMetrics
from monitors.schema import InferenceRecord, decode_records


class FlakySink:
    """Delivers records unless ``up`` is False; remembers what it got, in order."""

    def __init__(self) -> None:
        self.up = True
        self.got: list[str] = []
        self.delay_s = 0.0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, records: list[tuple[bytes, bytes]]) -> int:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if not self.up:
            return 0
        for _, value in records:
            self.got.extend(record["request_id"] for record in decode_records(value))
        return len(records)


def record(i: int) -> InferenceRecord:
    return {"schema_version": 2, "request_id": f"r{i}", "time": 0.0, "model": "m",
            "version": "1", "role": "primary", "rows": 1, "status": "ok"}  # fmt: skip


def make(sink: FlakySink, spool_dir: Path, registry: CollectorRegistry, **kw: int) -> FeatureLog:
    options = {"queue_size": 10_000, "batch_size": 50}
    options.update(kw)
    return FeatureLog(
        sink,
        Spool(spool_dir, max_bytes=10_000_000),
        FeatureLogMetrics(registry),
        linger_s=0.005,
        replay_backoff_s=(0.01, 0.05),
        **options,
    )


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    result = registry.get_sample_value(name, labels)
    return result or 0.0


async def wait_for(condition: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_records_reach_the_sink_in_order(tmp_path: Path) -> None:
    sink, registry = FlakySink(), CollectorRegistry()
    async with make(sink, tmp_path, registry) as feature_log:
        for i in range(500):
            feature_log.submit(b"m", record(i))
    assert sink.got == [f"r{i}" for i in range(500)]
    assert value(registry, "gateway_feature_log_records_total", event="produced") == 500


async def test_outage_spools_then_replays_everything_in_order(tmp_path: Path) -> None:
    sink, registry = FlakySink(), CollectorRegistry()
    async with make(sink, tmp_path, registry) as feature_log:
        for i in range(100):
            feature_log.submit(b"m", record(i))
        await wait_for(lambda: len(sink.got) == 100)
        sink.up = False
        for i in range(100, 400):
            feature_log.submit(b"m", record(i))
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        await wait_for(
            lambda: value(registry, "gateway_feature_log_records_total", event="spooled") == 300
        )
        assert value(registry, "gateway_feature_log_spool_messages") > 0
        sink.up = True
        for i in range(400, 450):
            feature_log.submit(b"m", record(i))
        await wait_for(lambda: len(sink.got) == 450)
    assert sink.got == [f"r{i}" for i in range(450)]
    assert value(registry, "gateway_feature_log_records_total", event="replayed") >= 300


async def test_shutdown_spools_what_it_cannot_send_and_restart_replays(tmp_path: Path) -> None:
    sink, registry = FlakySink(), CollectorRegistry()
    sink.up = False
    async with make(sink, tmp_path, registry) as feature_log:
        for i in range(120):
            feature_log.submit(b"m", record(i))
    assert Spool(tmp_path, max_bytes=10_000_000).pending_records > 0
    sink.up = True
    async with make(sink, tmp_path, CollectorRegistry()):
        await wait_for(lambda: len(sink.got) == 120)
    assert sink.got == [f"r{i}" for i in range(120)]


async def test_full_queue_drops_and_counts_never_blocks(tmp_path: Path) -> None:
    sink, registry = FlakySink(), CollectorRegistry()
    sink.delay_s = 0.2
    async with make(sink, tmp_path, registry, queue_size=10, batch_size=5) as feature_log:
        for i in range(100):
            feature_log.submit(b"m", record(i))
        dropped = value(registry, "gateway_feature_log_dropped_records_total", reason="queue_full")
        assert dropped == 90
    assert len(sink.got) == 10
