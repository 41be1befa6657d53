from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import orjson
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)
from prometheus_client import CollectorRegistry

from gateway.featurelog.dead_letter import DeadLetterFile
from gateway.featurelog.kafka_sink import SendResult, refusal_reason
from gateway.featurelog.log import FeatureLog
from gateway.featurelog.spool import Spool
from gateway.metrics import FeatureLogMetrics
from monitors.schema import InferenceRecord, decode_records
from tests._log_records import log_record
from tests._support import wait_for


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
    shutdown_timeout_s: float = 10.0,
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
        shutdown_timeout_s=shutdown_timeout_s,
    )


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    result = registry.get_sample_value(name, labels)
    return result or 0.0


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


class LimitedSink(FlakySink):
    """Refuses every message over 1 MB for good, as a Kafka broker with its default
    ``message.max.bytes`` does."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, int] = {}

    async def send(self, records: list[tuple[bytes, bytes]]) -> SendResult:
        refused = {i: "message_size_too_large" for i, (_, v) in enumerate(records) if len(v) > 1e6}
        for i, (_, value) in enumerate(records):
            if i in refused:
                continue
            for record in decode_records(value):
                if record["request_id"] not in self.rows:
                    self.got.append(record["request_id"])
                self.rows[record["request_id"]] = (
                    self.rows.get(record["request_id"], 0) + record["rows"]
                )
        return SendResult(len(records), refused)


async def test_messages_the_broker_refuses_go_to_the_dead_letter_file_and_block_nothing(
    tmp_path: Path,
) -> None:
    sink, registry = LimitedSink(), CollectorRegistry()
    # max_message_bytes set above what the broker takes: a misconfiguration the log survives
    async with make(sink, tmp_path, registry, max_message_bytes=4_000_000) as feature_log:
        feature_log.submit(b"m", log_record(0))
        feature_log.submit(b"m", log_record(1, rows=40_000))
        for i in range(2, 200):
            feature_log.submit(b"m", log_record(i))
        await wait_for(lambda: "r199" in sink.got)
    assert [i for i in sink.got if i != "r1"] == ["r0", *(f"r{i}" for i in range(2, 200))]
    dead_letter = (tmp_path / "dead-letter.jsonl").read_bytes().splitlines()
    lines = [orjson.loads(line) for line in dead_letter]
    assert {line["reason"] for line in lines} == {"message_size_too_large"}
    dead = [r for line in lines for r in decode_records(line["message"].encode())]
    assert {r["request_id"] for r in dead} == {"r1"}
    assert sum(r["rows"] for r in dead) + sink.rows.get("r1", 0) == 40_000, "each part somewhere"
    reason = {"reason": "message_size_too_large"}
    assert value(registry, "gateway_feature_log_dead_letter_records_total", **reason) == len(dead)
    assert Spool(tmp_path, max_bytes=10_000_000).pending_records == 0, "nothing stuck"


async def test_within_the_broker_limit_a_large_request_is_logged_whole_in_parts(
    tmp_path: Path,
) -> None:
    sink, registry = LimitedSink(), CollectorRegistry()
    async with make(sink, tmp_path, registry) as feature_log:
        feature_log.submit(b"m", log_record(0, rows=140_000))
        feature_log.submit(b"m", log_record(1, routing_key="k" * (1 << 20)))
        await wait_for(lambda: "r1" in sink.got)
    assert set(sink.got) == {"r0", "r1"}
    assert (
        value(registry, "gateway_feature_log_dead_letter_records_total", reason="message_too_large")
        == 0
    )
    assert value(registry, "gateway_feature_log_oversized_records_total", action="split") == 1
    assert value(registry, "gateway_feature_log_oversized_records_total", action="cut") == 1


def test_only_non_retriable_broker_errors_are_refusals() -> None:
    assert refusal_reason(MessageSizeTooLargeError()) == "message_size_too_large"
    assert refusal_reason(TopicAuthorizationFailedError()) == "topic_authorization_failed"
    assert refusal_reason(NotLeaderForPartitionError()) is None
    assert refusal_reason(KafkaConnectionError()) is None
    assert refusal_reason(TimeoutError()) is None


async def test_a_spool_the_disk_refuses_drops_and_counts_and_the_log_goes_on(
    tmp_path: Path,
) -> None:
    # The broker is down and the disk is full (the spool's segment is /dev/full: every write
    # fails with ENOSPC). Before, the OSError ended the sender for good: nothing was sent
    # again, even once the disk and the broker were back.
    sink, registry = FlakySink(), CollectorRegistry()
    sink.up = False
    async with make(sink, tmp_path, registry) as feature_log:
        (tmp_path / "00000000.seg").symlink_to("/dev/full")
        for i in range(20):
            feature_log.submit(b"m", record(i))
        dropped = "gateway_feature_log_dropped_records_total"
        await wait_for(lambda: value(registry, dropped, reason="spool_error") == 20)
        (tmp_path / "00000000.seg").unlink()  # space again, and the broker is back
        sink.up = True
        for i in range(20, 40):
            feature_log.submit(b"m", record(i))
        await wait_for(lambda: len(sink.got) == 20, timeout_s=20)
    assert sink.got == [f"r{i}" for i in range(20, 40)]
    assert value(registry, "gateway_feature_log_records_total", event="spooled") == 0
    assert Spool(tmp_path, max_bytes=10_000_000).pending_records == 0


async def test_a_stop_whose_deadline_cuts_a_send_spools_the_records_it_held(
    tmp_path: Path,
) -> None:
    # A broker that takes far longer than the shutdown timeout: before, the records the sender
    # held when it was cancelled were lost, neither sent nor spooled nor counted.
    sink, registry = FlakySink(), CollectorRegistry()
    sink.delay_s = 60.0
    async with make(sink, tmp_path, registry, shutdown_timeout_s=0.2) as feature_log:
        for i in range(10):
            feature_log.submit(b"m", record(i))
        await wait_for(sink.sending.is_set)
        for i in range(10, 15):  # queued behind the stuck send
            feature_log.submit(b"m", record(i))
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spooled = [r["request_id"] for e in spool.read(100) for r in decode_records(e.value)]
    assert spooled == [f"r{i}" for i in range(15)]
    assert value(registry, "gateway_feature_log_records_total", event="spooled") == 15


class GatedSpool(Spool):
    """A spool whose appends wait for ``gate`` (a slow disk), outside the spool's own lock."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, max_bytes=10_000_000)
        self.gate = threading.Event()
        self.gate.set()

    def append(self, records: list[tuple[bytes, bytes]]) -> int:
        self.gate.wait()
        return super().append(records)


async def test_a_record_spooled_while_the_replay_empties_the_spool_is_replayed(
    tmp_path: Path,
) -> None:
    # The replayer empties the spool while the sender is still writing a newer record to it
    # (the broker came back between the two). Before, the replayer cleared the sender's
    # wake-up and waited for the next spooled record: r1 stayed on disk until more traffic
    # came, or a restart.
    sink, registry, spool = FlakySink(), CollectorRegistry(), GatedSpool(tmp_path)
    sink.up = False
    feature_log = FeatureLog(sink, spool, FeatureLogMetrics(registry), queue_size=100,
                             batch_size=50, linger_s=0.005, replay_backoff_s=(0.01, 0.01))  # fmt: skip
    async with feature_log:
        feature_log.submit(b"m", record(0))
        await wait_for(lambda: spool.pending_records == 1)
        spool.gate.clear()  # the disk stalls as the sender spools r1 behind r0
        feature_log.submit(b"m", record(1))
        await wait_for(lambda: feature_log.queue_depth == 0)
        sink.up = True
        await wait_for(lambda: value(registry, "gateway_feature_log_records_total",
                                     event="replayed") == 1)  # fmt: skip
        for _ in range(10):  # the replayer, finding the spool empty, waits for the sender
            await asyncio.sleep(0)
        spool.gate.set()
        await wait_for(lambda: sink.got == ["r0", "r1"], timeout_s=5)


async def test_the_queue_is_bounded_in_bytes_as_well_as_in_records(tmp_path: Path) -> None:
    # A broker that hangs while clients send requests of 10,000 rows (each about 5 MB as JSON).
    # Before, only the count bounded the queue: all 40 were held, and 50,000 (the default
    # queue_size) of 100,000-row requests would be about 600 GB of arrays in memory.
    sink, registry = FlakySink(), CollectorRegistry()
    sink.delay_s = 60.0
    feature_log = FeatureLog(sink, Spool(tmp_path, max_bytes=1 << 30), FeatureLogMetrics(registry),
                             queue_size=10_000, queue_max_bytes=20_000_000, batch_size=1,
                             linger_s=0.0, shutdown_timeout_s=0.1)  # fmt: skip
    async with feature_log:
        feature_log.submit(b"m", log_record(0))
        await wait_for(sink.sending.is_set)  # the sender is stuck with r0
        for i in range(1, 41):
            feature_log.submit(b"m", log_record(i, rows=10_000))
        assert 1 <= feature_log.queue_depth <= 4
        dropped = value(registry, "gateway_feature_log_dropped_records_total", reason="queue_full")
        assert dropped == 40 - feature_log.queue_depth
        depth = feature_log.queue_depth
        feature_log.submit(b"m", log_record(41))  # a small record fits in what is left
        assert feature_log.queue_depth == depth + 1


class StalledDeadLetter(DeadLetterFile):
    """A dead-letter file on a disk that stalls until ``gate`` is set."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, 1 << 20)
        self.gate = threading.Event()

    def append(self, key: bytes, value: bytes, records: int, reason: str) -> bool:
        self.gate.wait()
        return super().append(key, value, records, reason)


class RefuseFirstSink(FlakySink):
    """Refuses the first message of a send for good and takes none of the others (an outage)."""

    async def send(self, records: list[tuple[bytes, bytes]]) -> SendResult:
        return SendResult(1, {0: "message_size_too_large"})


async def test_a_stop_while_a_refusal_is_written_spools_the_rest_of_the_round(
    tmp_path: Path,
) -> None:
    # The shutdown deadline cuts the round while the refused message goes to a stalled
    # dead-letter file. Before, the round's unsent messages were neither sent nor spooled nor
    # counted: lost.
    dead_letter = StalledDeadLetter(tmp_path / "dead")
    feature_log = FeatureLog(RefuseFirstSink(), Spool(tmp_path, max_bytes=1 << 30),
                             FeatureLogMetrics(CollectorRegistry()), queue_size=1000,
                             batch_size=300, linger_s=0.0, dead_letter=dead_letter,
                             shutdown_timeout_s=0.2)  # fmt: skip
    try:
        async with feature_log:
            for i in range(300):  # three messages of 100 records
                feature_log.submit(b"m", record(i))
    finally:
        dead_letter.gate.set()
    spool = Spool(tmp_path, max_bytes=1 << 30)
    spooled = [r["request_id"] for e in spool.read(100) for r in decode_records(e.value)]
    assert spooled == [f"r{i}" for i in range(100, 300)]
