from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.featurelog.kafka_sink import SendResult
from gateway.featurelog.log import FeatureLog
from gateway.featurelog.spool import Spool
from gateway.metrics import FeatureLogMetrics
from monitors.schema import InferenceRecord, decode_records


class FlakySink:
    """Delivers records unless ``up`` is False; remembers what it got, in order. ``sending``
    is set while a send is in progress."""

    def __init__(self) -> None:
        self.up = True
        self.got: list[str] = []
        self.delay_s = 0.0
        self.sending = asyncio.Event()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, records: list[tuple[bytes, bytes]]) -> SendResult:
        self.sending.set()
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if not self.up:
                return SendResult(0)
            for _, value in records:
                self.got.extend(record["request_id"] for record in decode_records(value))
            return SendResult(len(records))
        finally:
            self.sending.clear()


def record(i: int) -> InferenceRecord:
    return {"schema_version": 2, "request_id": f"r{i}", "time": 0.0, "model": "m",
            "version": "1", "role": "primary", "rows": 1, "status": "ok"}  # fmt: skip


def make(
    sink: FlakySink,
    spool_dir: Path,
    registry: CollectorRegistry,
    spool_bytes: int = 10_000_000,
    queue_size: int = 10_000,
    batch_size: int = 50,
    max_message_bytes: int = 1_000_000,
) -> FeatureLog:
    return FeatureLog(
        sink,
        Spool(spool_dir, max_bytes=spool_bytes),
        FeatureLogMetrics(registry),
        queue_size=queue_size,
        batch_size=batch_size,
        linger_s=0.005,
        max_message_bytes=max_message_bytes,
        replay_backoff_s=(0.01, 0.05),
    )


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    result = registry.get_sample_value(name, labels)
    return result or 0.0


async def wait_for(condition: object, timeout_s: float = 60.0) -> None:
    """Wait until ``condition()`` holds; the generous bound only turns a hang into a failure."""
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
    spooled = value(registry, "gateway_feature_log_records_total", event="spooled")
    assert spooled >= 300
    assert value(registry, "gateway_feature_log_records_total", event="replayed") == spooled
    assert Spool(tmp_path, max_bytes=10_000_000).pending_records == 0


async def test_a_stop_during_a_replay_counts_and_acknowledges_what_was_sent(
    tmp_path: Path,
) -> None:
    down = FlakySink()
    down.up = False
    async with make(down, tmp_path, CollectorRegistry()) as feature_log:
        for i in range(300):
            feature_log.submit(b"m", record(i))
    sink, registry = FlakySink(), CollectorRegistry()
    sink.delay_s = 0.2  # the stop comes while the broker has the records but has not answered
    async with make(sink, tmp_path, registry, batch_size=5):
        await sink.sending.wait()
    replayed = value(registry, "gateway_feature_log_records_total", event="replayed")
    assert replayed == len(sink.got) > 0, "what the broker took is counted"
    rest = FlakySink()
    async with make(rest, tmp_path, CollectorRegistry()):
        await wait_for(lambda: len(sink.got) + len(rest.got) == 300)
    assert sink.got + rest.got == [f"r{i}" for i in range(300)], "nothing sent twice or lost"


async def test_a_spool_too_small_for_one_message_recovers_when_the_broker_returns(
    tmp_path: Path,
) -> None:
    sink, registry = FlakySink(), CollectorRegistry()
    sink.up = False
    async with make(sink, tmp_path, registry, spool_bytes=1024) as feature_log:
        for i in range(100):
            feature_log.submit(b"m", record(i))
        dropped = ("gateway_feature_log_dropped_records_total", {"reason": "spool_full"})
        await wait_for(lambda: value(registry, dropped[0], **dropped[1]) == 100)
        sink.up = True
        feature_log.submit(b"m", record(100))
        await wait_for(lambda: sink.got == ["r100"])
    assert value(registry, "gateway_feature_log_records_total", event="produced") == 1


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
