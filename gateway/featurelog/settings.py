"""Settings of the feature log: the Kafka producer, its spool, sampling and privacy."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from monitors.kafka_security import KafkaSecurity

__all__ = ["FeatureLogSettings"]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeatureLogSettings(KafkaSecurity):
    group: ClassVar[str] = "feature_log"

    enabled: bool = False
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "inference-log"
    # Create the topic at start when it is missing (needs the broker's admin API).
    create_topic: bool = True
    topic_partitions: int = Field(default=3, ge=1)
    client_id: str = "model-gateway"
    acks: Literal["all", "1", "0"] = "all"
    # zstd compresses these records about as well as gzip at a thirtieth of the CPU time.
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "zstd"
    # Off by default: Tansu (the embedded broker) does not support the idempotent producer.
    idempotent: bool = False
    # A sender round waits this long for ``batch_size`` records. A round's cost is mostly fixed
    # (wake-ups, a produce request and its acknowledgement, a compression call): at 2,000
    # records/s rounds every 0.1 s halve the log's CPU a record against every 0.02 s (41 -> 21
    # us, ``loadtests/bench_featurelog.py``). A saturated gateway fills batches before it.
    linger_s: float = Field(default=0.1, ge=0)
    batch_size: int = Field(default=500, ge=1)
    queue_size: int = Field(default=50_000, ge=1)
    # The queue's bound in bytes, of its records' estimated JSON size: 50,000 records of
    # 100,000 rows each would otherwise be held in memory during an outage.
    queue_max_bytes: int = Field(default=512 * 1024**2, ge=1024**2)
    timeout_s: float = Field(default=5.0, gt=0)
    # Kafka refuses a message over the broker's message.max.bytes (1,048,588 by default) or the
    # topic's max.message.bytes: messages are packed to stay at or under this many bytes.
    max_message_bytes: int = Field(default=1_000_000, ge=16 * 1024)
    spool_dir: Path = Path("feature-log-spool")
    spool_max_bytes: int = Field(default=1024**3, ge=1024)
    # dead-letter.jsonl in spool_dir: messages the broker refused for good, kept for an operator.
    dead_letter_max_bytes: int = Field(default=256 * 1024**2, ge=1024)
    sampling_rate: float = Field(default=1.0, ge=0, le=1)
    sample_by: Literal["random", "routing_key"] = "random"
    drop_features: list[str] = Field(default_factory=list)
    hash_features: list[str] = Field(default_factory=list)
    hash_key: SecretStr = SecretStr("")
