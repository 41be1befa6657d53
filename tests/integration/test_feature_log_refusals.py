"""The feature log when a Kafka cluster refuses a whole topic: an ACL that denies it.

Tansu, the embedded broker, has no ACLs. A cluster that denies the gateway's principal the
topic answers the producer's metadata request with TOPIC_AUTHORIZATION_FAILED for it, and
aiokafka raises ``TopicAuthorizationFailedError`` from ``partitions_for``, before any batch is
made. The producer here does exactly that for a denied topic, in front of the real broker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
from prometheus_client import CollectorRegistry

from gateway.featurelog import FeatureLog, FeatureLogSettings, producer_options
from gateway.featurelog.kafka_sink import KafkaSink
from gateway.featurelog.spool import Spool
from gateway.metrics import FeatureLogMetrics
from monitors.broker import EmbeddedBroker, create_topics
from monitors.schema import decode_records
from tests._log_records import log_record
from tests._support import wait_for

pytestmark = pytest.mark.e2e

DENIED = "inference-log"


class AclProducer(AIOKafkaProducer):  # type: ignore[misc]
    """A producer whose principal the cluster denies ``DENIED``."""

    async def partitions_for(self, topic: str) -> set[int]:
        if topic == DENIED:
            raise TopicAuthorizationFailedError(topic)
        partitions: set[int] = await super().partitions_for(topic)
        return partitions


def test_a_topic_the_acls_deny_dead_letters_its_records_instead_of_spooling_them(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # Before, the refusal was taken for an outage: every record went to the spool and was
    # retried forever (the spool filling to its bound, then dropping), none dead-lettered, as
    # a batch the broker refuses for the same reason is.
    asyncio.run(create_topics(broker.bootstrap_servers, [DENIED], partitions=3))
    options = producer_options(FeatureLogSettings(bootstrap_servers=broker.bootstrap_servers))
    registry = CollectorRegistry()

    async def log_all() -> None:
        feature_log = FeatureLog(
            KafkaSink(DENIED, options, timeout_s=5.0, producer_class=AclProducer),
            Spool(tmp_path, max_bytes=1 << 30),
            FeatureLogMetrics(registry),
            queue_size=1000,
            batch_size=50,
            linger_s=0.01,
        )
        async with feature_log:
            for i in range(120):
                feature_log.submit(b"m", log_record(i))
            dead = "gateway_feature_log_dead_letter_records_total"
            reason = {"reason": "topic_authorization_failed"}
            await wait_for(lambda: registry.get_sample_value(dead, reason) == 120, timeout_s=30)

    asyncio.run(log_all())
    lines = [orjson.loads(line) for line in (tmp_path / "dead-letter.jsonl").read_bytes().split()]
    assert {line["reason"] for line in lines} == {"topic_authorization_failed"}
    kept = [r["request_id"] for line in lines for r in decode_records(line["message"].encode())]
    assert kept == [f"r{i}" for i in range(120)]
    assert not registry.get_sample_value("gateway_feature_log_records_total", {"event": "spooled"})
    assert Spool(tmp_path, max_bytes=1 << 30).pending_records == 0
