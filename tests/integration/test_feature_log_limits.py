"""The feature log against a broker that enforces Kafka's message size limit.

Tansu, the embedded broker, takes messages of any size; a Kafka cluster refuses a record batch
over ``message.max.bytes`` (1,048,588 bytes by default) with MESSAGE_TOO_LARGE. The producer
here enforces that limit in front of the real broker, failing an oversized batch exactly as
aiokafka reports the broker's refusal (``MessageSizeTooLargeError`` on the batch's future), so
the real sink, spool and log run end to end against it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from prometheus_client import CollectorRegistry

from gateway.featurelog import FeatureLog, FeatureLogSettings, producer_options
from gateway.featurelog.kafka_sink import KafkaSink
from gateway.featurelog.spool import Spool
from gateway.metrics import FeatureLogMetrics
from monitors.broker import EmbeddedBroker, create_topics
from monitors.schema import InferenceRecord, decode_records
from tests._kafka import read_records
from tests._log_records import log_record

pytestmark = pytest.mark.e2e

KAFKA_MESSAGE_MAX_BYTES = 1_048_588  # Kafka's default message.max.bytes
TOPIC = "inference-log"


class KafkaLimitProducer(AIOKafkaProducer):  # type: ignore[misc]
    """A producer whose broker enforces Kafka's default ``message.max.bytes``."""

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        if batch.size() > KAFKA_MESSAGE_MAX_BYTES:
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(MessageSizeTooLargeError())
            return refused
        future: asyncio.Future[Any] = await super().send_batch(batch, topic, partition=partition)
        return future


def requests() -> list[InferenceRecord]:
    """Ordinary requests around three that no Kafka default would take in one message."""
    records = [log_record(i) for i in range(300)]
    records[50] = log_record(50, rows=140_000)  # a 16 MiB binary request: 48 MB of JSON
    records[120] = log_record(120, routing_key="k" * (1 << 20))  # a 1 MiB x-routing-key
    records[200] = log_record(200, rows=20_000, routing_key="u" * (1 << 20))
    return records


async def log_all(bootstrap: str, spool: Path, **settings: Any) -> CollectorRegistry:
    options = producer_options(FeatureLogSettings(bootstrap_servers=bootstrap, **settings))
    registry = CollectorRegistry()
    feature_log = FeatureLog(
        KafkaSink(TOPIC, options, timeout_s=10.0, producer_class=KafkaLimitProducer),
        Spool(spool, max_bytes=1 << 30),
        FeatureLogMetrics(registry),
        queue_size=10_000,
        batch_size=500,
        linger_s=0.01,
        max_message_bytes=settings.get("max_message_bytes", 1_000_000),
    )
    async with feature_log:
        for record in requests():
            feature_log.submit(b"m", record)
    return registry


def rows_by_id(records: list[InferenceRecord]) -> dict[str, int]:
    rows: dict[str, int] = {}
    for record in records:
        rows[record["request_id"]] = rows.get(record["request_id"], 0) + record["rows"]
    return rows


def test_nothing_is_lost_or_stuck_with_kafkas_message_limit(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    asyncio.run(create_topics(broker.bootstrap_servers, [TOPIC], partitions=3))
    registry = asyncio.run(log_all(broker.bootstrap_servers, tmp_path / "spool"))
    got = read_records(broker.bootstrap_servers, TOPIC, 0, timeout_s=60, settle_s=3.0)
    expected = {r["request_id"]: r["rows"] for r in requests()}
    assert rows_by_id(got) == expected, "every request logged, every row of it"
    parts = [r for r in got if r["request_id"] == "r50"]
    assert len(parts) > 40
    assert all("features" in p for p in parts)
    cut = next(r for r in got if r["request_id"] == "r120")
    assert cut["omitted"] == ["routing_key"]
    assert len(cut["features"]["f0"]) == 1
    assert registry.get_sample_value("gateway_feature_log_records_total", {"event": "produced"})
    assert not (tmp_path / "spool" / "dead-letter.jsonl").exists()
    assert Spool(tmp_path / "spool", max_bytes=1 << 30).pending_records == 0


def test_a_bound_above_the_brokers_dead_letters_only_what_it_refuses(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    asyncio.run(create_topics(broker.bootstrap_servers, [TOPIC], partitions=3))
    registry = asyncio.run(
        log_all(broker.bootstrap_servers, tmp_path / "spool", compression="none",
                max_message_bytes=4_000_000)
    )  # fmt: skip
    got = read_records(broker.bootstrap_servers, TOPIC, 0, timeout_s=60, settle_s=3.0)
    lines = (tmp_path / "spool" / "dead-letter.jsonl").read_bytes().splitlines()
    dead = [r for line in lines for r in decode_records(orjson.loads(line)["message"].encode())]
    # the 1 MiB routing key fits the 4 MB bound, so its message of 100 records is refused whole
    assert {r["request_id"] for r in dead} >= {"r50", "r120", "r200"}
    found = rows_by_id(got)
    for request_id, rows in rows_by_id(dead).items():
        found[request_id] = found.get(request_id, 0) + rows
    assert found == {r["request_id"]: r["rows"] for r in requests()}, "on the topic or kept"
    refused = registry.get_sample_value(
        "gateway_feature_log_dead_letter_records_total", {"reason": "message_size_too_large"}
    )
    assert refused == len(dead)
    assert Spool(tmp_path / "spool", max_bytes=1 << 30).pending_records == 0, "nothing stuck"
