"""Records per second one monitor process consumes and evaluates (30 features), against the
records per second the gateway's feature log produces, each on one core.

The records are built as the gateway builds them (``RecordBuilder.build`` for single-row
requests of a 30-feature tabular model) and packed as its feature log packs them
(``pack_messages``: 100 to a Kafka message, schema version 2 columns); ``--encoding lines``
packs them as version 1 gateways did (a JSON record per line), which the monitor still reads.
The monitor side is ``MonitorService.consume`` on polls of 50 messages, as its Kafka loop calls
it: decoding, count windows of 5,000 rows, each closed window evaluated against the profile;
without Kafka and without the snapshot written after each poll.

``python -m loadtests.drift_throughput [--records 200000] [--encoding columns|lines]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from gateway.featurelog import RecordBuilder, RequestInfo, pack_messages
from loadtests.drift_quality import NAMES, X, registered
from monitors.metrics import MonitorMetrics
from monitors.profile import ModelProfile, build_profile
from monitors.schema import InferenceRecord, encode_record
from monitors.service import MonitorService
from monitors.settings import MonitorSettings

MODEL = "m"
POLL = 50  # messages per consumer poll: 5,000 records, the monitor's max_batch_records
BATCH = 500  # records per send of the feature log (feature_log.batch_size)


def profile() -> ModelProfile:
    """The model's 30 features and its predicted label (what its records hold)."""
    columns = {name: X[:, j] for j, name in enumerate(NAMES)}
    columns["prediction:label"] = (np.random.default_rng(1).uniform(size=len(X)) > 0.5).astype(
        float
    )
    return build_profile(columns)


def requests(count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(input, label, probabilities) of single-row requests, as the runtime hands them over."""
    rng = np.random.default_rng(0)
    rows = X[rng.integers(0, len(X), count)].astype(np.float32)
    p = rng.uniform(size=count).astype(np.float32)
    return [
        (rows[i : i + 1], np.array([int(p[i] > 0.5)]), np.array([[1 - p[i], p[i]]]))
        for i in range(count)
    ]


def build_records(served: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[InferenceRecord]:
    builder = RecordBuilder()
    return [
        builder.build(
            RequestInfo(f"r{i}", 1.7e9 + i * 0.001, MODEL),
            model=MODEL,
            version="1",
            variant="default",
            role="primary",
            feature_input="input",
            feature_names=NAMES,
            inputs={"input": inputs},
            outputs={"label": label, "probabilities": probabilities},
            rows=1,
            latency_s=0.002,
            status="ok",
        )
        for i, (inputs, label, probabilities) in enumerate(served)
    ]


def encode(records: list[InferenceRecord], encoding: str) -> list[bytes]:
    if encoding == "columns":
        return [value for _, value, _ in pack_messages((MODEL.encode(), r) for r in records)]
    lines = [encode_record({**r, "schema_version": 1}) for r in records]  # as before version 2
    return [b"\n".join(lines[i : i + 100]) for i in range(0, len(lines), 100)]


class Clock:
    """Wall and CPU seconds of a stretch of work (the CPU time is this process's: on a shared
    machine it does not count the time other processes held the core)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def gateway_time(served: list[tuple[np.ndarray, np.ndarray, np.ndarray]], encoding: str) -> Clock:
    """The time the feature log takes to build and encode the records of these requests, 500
    at a time (its send batch)."""
    with Clock() as clock:
        for start in range(0, len(served), BATCH):
            encode(build_records(served[start : start + BATCH]), encoding)
    return clock


def monitor_time(messages: list[bytes], registry: Path) -> tuple[Clock, int]:
    """(the time one monitor takes to consume these messages, windows it evaluated)."""
    with tempfile.TemporaryDirectory() as state:
        settings = MonitorSettings(
            registry_root=registry,
            state_dir=Path(state),
            window={"by": "count", "size": 5000, "slide": 5000},
        )
        metrics = MonitorMetrics(CollectorRegistry())
        service = MonitorService(settings, metrics)
        consumed = [_consumer_record(offset, value) for offset, value in enumerate(messages)]
        polls = [consumed[i : i + POLL] for i in range(0, len(consumed), POLL)]
        clock = asyncio.run(_consume(service, polls))
        samples = (s for m in metrics.windows.collect() for s in m.samples)
        windows = sum(s.value for s in samples if s.name.endswith("_total"))
    return clock, int(windows)


async def _consume(
    service: MonitorService, polls: list[list[ConsumerRecord[bytes, bytes]]]
) -> Clock:
    with Clock() as clock:
        for poll in polls:
            await service.consume(0, poll)
    await service.webhooks.aclose()
    return clock


def _consumer_record(offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "inference-log", 0, offset, 0, 0, MODEL.encode(), value, None, 1, len(value), []
    )


def main() -> None:
    gc.freeze()  # as the monitor service does, see monitors/service.py
    gc.set_threshold(50_000, 20, 100)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encoding", choices=["columns", "lines"], default="columns")
    args = parser.parse_args()
    served = requests(args.records)
    messages = encode(build_records(served), args.encoding)
    size = sum(map(len, messages)) / args.records
    print(
        f"{args.records} records in {len(messages)} messages ({args.encoding}, {size:.0f} B/record)"
    )
    with tempfile.TemporaryDirectory() as registry:
        registered(Path(registry), MODEL, profile())
        monitor: list[Clock] = []
        gateway: list[Clock] = []
        for _ in range(args.repeats):
            clock, windows = monitor_time(messages, Path(registry))
            monitor.append(clock)
            line = (
                f"monitor {args.records / clock.wall:,.0f} records/s "
                f"({args.records / clock.cpu:,.0f} per CPU second, {windows} windows)"
            )
            if args.encoding == "columns":  # what the gateway writes today
                gateway.append(gateway_time(served, args.encoding))
                line += (
                    f"; gateway feature log {args.records / gateway[-1].wall:,.0f} records/s "
                    f"({args.records / gateway[-1].cpu:,.0f} per CPU second)"
                )
            print(line)
    for side, clocks in (("monitor", monitor), ("gateway feature log", gateway)):
        if not clocks:
            continue
        wall = args.records / statistics.median(c.wall for c in clocks)
        cpu = args.records / statistics.median(c.cpu for c in clocks)
        print(f"{side}: median of {len(clocks)}: {wall:,.0f} records/s ({cpu:,.0f} per CPU second)")


if __name__ == "__main__":
    main()
