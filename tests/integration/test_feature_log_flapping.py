"""The feature log while the network to a real broker flaps every second or so.

A TCP proxy in front of the embedded broker (which advertises the proxy's address, so every
connection goes through it) cuts every connection and refuses new ones for a while, or keeps
them open and swallows the broker's answers (the broker wrote the records; their
acknowledgements are lost), then lets traffic through again. The broker itself keeps running,
so what reached it can be read back at the end.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.featurelog import FeatureLog, FeatureLogSettings, producer_options
from gateway.featurelog.kafka_sink import KafkaSink
from gateway.featurelog.spool import Spool
from gateway.metrics import FeatureLogMetrics
from monitors.broker import EmbeddedBroker, create_topics
from tests._kafka import read_records_async
from tests._log_records import log_record
from tests._support import free_port, wait_for

pytestmark = pytest.mark.e2e

TOPIC = "inference-log"
MODELS = ["a", "b", "c", "d"]
# seconds up, then down, in turn: about 8 s of traffic in all
SCHEDULE = [0.6, 0.4, 1.0, 1.2, 0.3, 0.8, 1.5, 0.5, 0.7, 1.0]


class FlappingProxy:
    """Forwards loopback connections to ``target_port`` while ``up``; down, it cuts them all
    (``swallow`` False) or keeps them and drops what the broker answers (``swallow`` True)."""

    def __init__(self, target_port: int, swallow: bool) -> None:
        self.target_port = target_port
        self.swallow = swallow
        self.up = True
        self._streams: set[asyncio.StreamWriter] = set()

    def set_up(self, up: bool) -> None:
        self.up = up
        if up == self.swallow:  # cut: as an outage starts, or (swallowing) as it ends
            for writer in list(self._streams):
                writer.transport.abort()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up and not self.swallow:
            writer.transport.abort()
            return
        try:
            broker_reader, broker_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self._streams |= {writer, broker_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, broker_writer, answers=False),
                self._pipe(broker_reader, writer, answers=True),
            )
        finally:
            self._streams -= {writer, broker_writer}

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, answers: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if answers and self.swallow and not self.up:
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


@pytest.mark.parametrize("swallow", [False, True], ids=["cut", "answers-lost"])
def test_a_flapping_network_loses_nothing_and_keeps_each_models_order(
    tmp_path: Path, swallow: bool
) -> None:
    proxy_port = free_port()
    with EmbeddedBroker(advertised_port=proxy_port) as broker:
        asyncio.run(run(broker, tmp_path, FlappingProxy(broker.port, swallow)))


async def run(broker: EmbeddedBroker, spool_dir: Path, proxy: FlappingProxy) -> None:
    bootstrap = broker.bootstrap_servers
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", int(bootstrap.split(":")[1]))
    async with server:
        await create_topics(bootstrap, [TOPIC], partitions=3)
        options = producer_options(FeatureLogSettings(bootstrap_servers=bootstrap))
        registry = CollectorRegistry()
        spool = Spool(spool_dir, max_bytes=1 << 30)
        feature_log = FeatureLog(
            KafkaSink(TOPIC, options, timeout_s=1.0),
            spool,
            FeatureLogMetrics(registry),
            queue_size=100_000,
            batch_size=500,
            linger_s=0.02,
            replay_backoff_s=(0.05, 0.5),
        )
        sent = 0
        async with feature_log:
            loop = asyncio.get_running_loop()
            for phase, seconds in enumerate(SCHEDULE):
                proxy.set_up(phase % 2 == 0)
                until = loop.time() + seconds
                while loop.time() < until:
                    for _ in range(10):
                        record = log_record(sent, model=MODELS[sent % len(MODELS)])
                        feature_log.submit(record["model"].encode(), record)
                        sent += 1
                    await asyncio.sleep(0.01)
            proxy.set_up(True)
            await wait_for(lambda: feature_log.queue_depth == spool.pending_records == 0)
        records = await read_records_async(bootstrap, TOPIC, sent, timeout_s=60, settle_s=2.0)

    def count(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    produced = count("gateway_feature_log_records_total", event="produced")
    replayed = count("gateway_feature_log_records_total", event="replayed")
    assert count("gateway_feature_log_records_total", event="spooled") == replayed > 0
    assert produced + replayed == sent, "each record counted once"
    ids = [int(r["request_id"][1:]) for r in records]
    assert set(ids) == set(range(sent)), "every record on the topic (some twice: at least once)"
    firsts: dict[str, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for record, i in zip(records, ids, strict=True):
        if i not in seen:
            seen.add(i)
            firsts[record["model"]].append(i)
    late = [(a, b) for order in firsts.values() for a, b in itertools.pairwise(order) if b < a]
    assert late == [], "a model's records out of order"
