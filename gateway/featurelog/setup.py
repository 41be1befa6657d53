"""Build the feature log from its settings: topic, producer options, spool, record rules."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.featurelog.dead_letter import DeadLetterFile
from gateway.featurelog.kafka_sink import KafkaSink
from gateway.featurelog.log import FeatureLog, PackFn
from gateway.featurelog.records import RecordBuilder
from gateway.featurelog.settings import FeatureLogSettings
from gateway.featurelog.spool import Spool, SpoolWriteError
from gateway.metrics import FeatureLogMetrics, GatewayMetrics
from monitors.broker import BrokerError, create_topics
from monitors.schema import message_records

__all__ = [
    "adopt_spools",
    "build_feature_log",
    "build_record_builder",
    "make_spool_dir",
    "open_log",
    "producer_options",
]

log = logging.getLogger(__name__)


def make_spool_dir(setting: str, directory: Path) -> None:
    """Create a spool folder before the server starts; ConfigError naming ``setting`` when it
    cannot be (a file in the way, a missing or read-only mount): a traceback from the lifespan
    said neither which setting nor that the gateway had not started."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot create {directory}: {exc.strerror or exc}") from exc


def producer_options(settings: FeatureLogSettings) -> dict[str, Any]:
    """``AIOKafkaProducer`` keyword arguments for these settings (secrets included)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "acks": "all" if settings.acks == "all" else int(settings.acks),
        "compression_type": None if settings.compression == "none" else settings.compression,
        "enable_idempotence": settings.idempotent,
        "linger_ms": int(settings.linger_s * 1000),
        # A produce request carries up to this much per partition (aiokafka's default, 16 KiB,
        # is about one packed message): with one request in flight per partition, small
        # batches cap the log near 2,000 records/s on a saturated event loop. Kafka bounds a
        # record batch by message.max.bytes, which max_message_bytes stays under.
        "max_batch_size": settings.max_message_bytes,
        **settings.security_options(),
    }
    return options


def build_record_builder(settings: FeatureLogSettings) -> RecordBuilder:
    """Sampling and privacy rules of the log records."""
    return RecordBuilder(
        sampling_rate=settings.sampling_rate,
        sample_by=settings.sample_by,
        drop_features=frozenset(settings.drop_features),
        hash_features=frozenset(settings.hash_features),
        hash_key=settings.hash_key.get_secret_value().encode(),
    )


@asynccontextmanager
async def build_feature_log(
    settings: FeatureLogSettings, metrics: GatewayMetrics, shutdown_timeout_s: float
) -> AsyncIterator[FeatureLog]:
    """A started feature log; the topic is created first when asked and reachable."""
    feature_log: FeatureLog
    async with open_log(settings, metrics.feature_log, shutdown_timeout_s) as feature_log:
        yield feature_log


@asynccontextmanager
async def open_log(
    settings: FeatureLogSettings,
    metrics: FeatureLogMetrics,
    shutdown_timeout_s: float,
    pack: PackFn | None = None,
    count: Callable[[bytes], int] = message_records,
) -> AsyncIterator[FeatureLog[Any]]:
    """A started log on ``settings.topic`` (the feature log's machinery: queue, Kafka sink,
    spool, replay, dead letters), counted on ``metrics``; of inference records unless ``pack``
    and ``count`` say how to pack another kind."""
    options = producer_options(settings)
    if settings.create_topic:
        await _create_topic(settings, options)
    spool = Spool(settings.spool_dir, settings.spool_max_bytes)
    sink = KafkaSink(settings.topic, options, settings.timeout_s)
    feature_log: FeatureLog[Any] = FeatureLog(
        sink,
        spool,
        metrics,
        queue_size=settings.queue_size,
        queue_max_bytes=settings.queue_max_bytes,
        batch_size=settings.batch_size,
        linger_s=settings.linger_s,
        max_message_bytes=settings.max_message_bytes,
        dead_letter=DeadLetterFile(settings.spool_dir, settings.dead_letter_max_bytes),
        shutdown_timeout_s=shutdown_timeout_s,
        pack=pack,
        count=count,
    )
    async with feature_log:
        yield feature_log


def adopt_spools(spool_dir: Path, max_bytes: int, workers: int) -> None:
    """Before a start with ``workers`` processes (1: one process, no supervisor), move what a
    run with another count spooled where no process of this one looks into a spool that one
    replays: ``spool_dir`` itself for one process, ``worker-0`` under it for several (each
    worker spools in ``spool_dir/worker-K``). Blocking file I/O, at start."""
    slots = sorted(
        (int(d.name.removeprefix("worker-")), d)
        for d in spool_dir.glob("worker-*")
        if d.name.removeprefix("worker-").isdigit() and d.is_dir()
    )
    if workers <= 1:
        into, sources = spool_dir, [d for _, d in slots]
    else:
        into = spool_dir / "worker-0"
        sources = [spool_dir, *(d for slot, d in slots if slot >= workers)]
    for source in sources:
        if not any(source.glob("*.seg")):
            continue
        try:
            moved = Spool(into, max_bytes).adopt(source)
        except (SpoolWriteError, OSError) as exc:
            log.error("feature log: cannot move the spool in %s to %s: %s", source, into, exc)
            continue
        log.info("feature log: %d messages spooled in %s (a run with other workers) moved "
                 "to %s, to be replayed", moved, source, into)  # fmt: skip
        if any(source.glob("*.seg")) and Spool(source, max_bytes).pending_records:
            log.error("feature log: %s is full; the rest stays in %s", into, source)


async def _create_topic(settings: FeatureLogSettings, options: dict[str, Any]) -> None:
    try:
        await create_topics(
            settings.bootstrap_servers,
            [settings.topic],
            settings.topic_partitions,
            timeout_s=0.0,  # one attempt: the gateway starts whether the broker is up or not
            client_options=options,
            request_timeout_s=settings.timeout_s,
        )
    except BrokerError as exc:  # the spool covers a broker that is not there yet
        log.warning("feature log: could not check or create topic %s: %s", settings.topic, exc)
