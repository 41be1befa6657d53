"""The feature log's CPU a record, away from HTTP: the gateway's own log path, stage by stage.

Single-row records of the benchmark MLP (32 features as the request's ``(1, 32)`` matrix,
``label`` and ``probabilities`` sliced from a batch's outputs) are built with the gateway's
``RecordBuilder`` and submitted to a real ``FeatureLog`` at a fixed rate (or as fast as
possible, ``0``: records in groups of 16 a loop pass, as a saturated gateway's batches finish),
on uvloop, this process pinned to CPU 0 and an embedded Tansu broker on CPU 1 (it stands for a
Kafka cluster elsewhere, so its CPU is not counted). Four modes, each adding a stage to the one
before, so that differences of process CPU time (every thread: aiokafka's compression and the
log's worker threads included) give each stage's cost:

- ``pace``: the pacing loop alone (subtracted from the others);
- ``build``: ``RecordBuilder.build`` for each record (thrown away);
- ``pack``: ``FeatureLog.submit`` to a log whose sink takes every message at once: the queue,
  the sender's rounds, ``estimate_bytes``, packing and encoding the version 2 messages;
- ``kafka``: the same log with the gateway's ``KafkaSink`` and producer options (zstd unless
  ``--compression`` says otherwise): producer batches, compression, produce requests, their
  acknowledgements.

Each run covers ``--records`` records from the first submission until the broker acknowledged
the last (the producer's start and stop are outside it). The modes run in turn, ``--repeats``
times, in alternating order; the table gives medians and ranges of CPU microseconds a record.

``python -m loadtests.bench_featurelog [--records 20000] [--rates 2000 4000 0] [--repeats 5]``
writes ``loadtests/results/featurelog-<time>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from prometheus_client import CollectorRegistry

from gateway.featurelog.kafka_sink import KafkaSink, SendResult
from gateway.featurelog.log import FeatureLog
from gateway.featurelog.records import RecordBuilder, RequestInfo
from gateway.featurelog.settings import FeatureLogSettings
from gateway.featurelog.setup import producer_options
from gateway.featurelog.spool import Spool
from gateway.metrics import FeatureLogMetrics
from loadtests.bench_cpu import spread
from loadtests.machine import machine_info, pin_process
from monitors.broker import EmbeddedBroker, create_topics

RESULTS = Path(__file__).parent / "results"
MODES = ("pace", "build", "pack", "kafka")
FEATURES = [f"f{i}" for i in range(32)]
_GROUP = 16  # records a loop pass when unpaced
_TICK_S = 0.001  # the paced loop's step: the records due are submitted each millisecond


class _Counted(FeatureLogMetrics):
    """The gateway's metrics, and a count of records produced that a run waits on."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.delivered = 0
        self.target = 0
        self.done = asyncio.Event()

    def produced(self, count: int) -> None:
        super().produced(count)
        self.delivered += count
        if self.delivered >= self.target:
            self.done.set()


class _TakeAll:
    """A sink that takes every message at once (the ``pack`` mode: no Kafka)."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, records: list[tuple[bytes, bytes]]) -> SendResult:
        return SendResult(len(records))


def _requests(count: int) -> list[tuple[RequestInfo, dict[str, np.ndarray], dict[str, Any]]]:
    """Single-row requests as the gateway holds them when it logs one: the parsed input and
    this request's slice of its batch's outputs."""
    rng = np.random.default_rng(0)
    batch = 16
    out: list[tuple[RequestInfo, dict[str, np.ndarray], dict[str, Any]]] = []
    prefix = os.urandom(6).hex()
    labels = rng.integers(0, 2, size=batch).astype(np.int64)
    probabilities = rng.random((batch, 2)).astype(np.float32)
    for i in range(count):
        row = rng.normal(size=(1, 32)).astype(np.float32)
        j = i % batch
        outputs = {"label": labels[j : j + 1], "probabilities": probabilities[j : j + 1]}
        out.append((RequestInfo(f"{prefix}-{i:x}", time.time(), "mlp"), {"input": row}, outputs))
    return out


async def _drive(
    mode: str,
    rate: float,
    requests: list[tuple[RequestInfo, dict[str, np.ndarray], dict[str, Any]]],
    broker: str,
    settings: FeatureLogSettings,
    work: Path,
) -> dict[str, Any]:
    builder = RecordBuilder()
    metrics = _Counted(CollectorRegistry())
    metrics.target = len(requests)
    feature_log: FeatureLog | None = None
    if mode in ("pack", "kafka"):
        sink = (
            KafkaSink(settings.topic, producer_options(settings), settings.timeout_s)
            if mode == "kafka"
            else _TakeAll()
        )
        feature_log = FeatureLog(
            sink,
            Spool(work / f"spool-{time.monotonic_ns()}", 64 * 1024 * 1024),
            metrics,
            queue_size=settings.queue_size,
            batch_size=settings.batch_size,
            linger_s=settings.linger_s,
            max_message_bytes=settings.max_message_bytes,
        )
        await feature_log.__aenter__()
        # one record through first: the producer has its metadata before the clock starts
        info, inputs, outputs = requests[0]
        metrics.target = 1
        feature_log.submit(b"mlp", _build(builder, info, inputs, outputs))
        await metrics.done.wait()
        metrics.done.clear()
        metrics.target = 1 + len(requests)
    build = mode != "pace"
    loop = asyncio.get_running_loop()
    wall, cpu = time.perf_counter(), time.process_time()
    start = loop.time()
    sent = 0
    total = len(requests)
    while sent < total:
        if rate > 0:
            due = min(total, int((loop.time() - start) * rate) + 1)
        else:
            due = min(total, sent + _GROUP)
        for info, inputs, outputs in requests[sent:due]:
            if build:
                record = _build(builder, info, inputs, outputs)
                if feature_log is not None:
                    feature_log.submit(b"mlp", record)
        sent = due
        if rate > 0:
            await asyncio.sleep(_TICK_S)
        else:
            await asyncio.sleep(0)
    if feature_log is not None:
        await asyncio.wait_for(metrics.done.wait(), 60)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    delivered = max(0, metrics.delivered - 1)  # less the one sent before the clock started
    if feature_log is not None:
        await feature_log.__aexit__(None, None, None)
    return {"cpu_s": cpu, "wall_s": round(wall, 3), "cpu_us_per_record": cpu / total * 1e6,
            "delivered": delivered}  # fmt: skip


def _build(
    builder: RecordBuilder,
    info: RequestInfo,
    inputs: dict[str, np.ndarray],
    outputs: dict[str, Any],
) -> Any:
    return builder.build(
        info,
        model="mlp",
        version="1",
        variant="champion",
        role="primary",
        feature_input="input",
        feature_names=FEATURES,
        inputs=inputs,
        outputs=outputs,
        rows=1,
        latency_s=0.0012,
        status="ok",
    )


def summarize(runs: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """Per rate: each mode's CPU us a record, and each stage's (a mode less the one before it,
    repeat by repeat: both ran back to back)."""
    report: dict[str, dict[str, Any]] = {}
    for rate, modes in runs.items():
        row: dict[str, Any] = {mode: spread(modes[mode], 2) for mode in MODES}
        pairs = [
            ("build", "build", "pace"),
            ("submit, pack, encode", "pack", "build"),
            ("compress, produce", "kafka", "pack"),
            ("log in all", "kafka", "pace"),
        ]
        row["stages"] = {
            name: spread([a - b for a, b in zip(modes[hi], modes[lo], strict=True)], 2)
            for name, hi, lo in pairs
        }
        report[rate] = row
    return report


def markdown(report: dict[str, dict[str, Any]]) -> str:
    stages = ["build", "submit, pack, encode", "compress, produce", "log in all"]
    lines = ["| rate | " + " | ".join(stages) + " |", "| --- |" + " --- |" * len(stages)]
    for rate, row in report.items():
        cells = [
            f"{row['stages'][s]['median']:.1f} ({row['stages'][s]['min']:.1f}-"
            f"{row['stages'][s]['max']:.1f})"
            for s in stages
        ]
        name = "unpaced" if float(rate) == 0 else f"{float(rate):,.0f}/s"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rates", type=float, nargs="+", default=[2000, 4000, 0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compression", default=None, help="the producer's compression")
    parser.add_argument("--linger-s", type=float, default=None, help="the log's linger_s")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    work = Path(tempfile.mkdtemp(prefix="featurelog-"))
    requests = _requests(args.records)
    # as the gateway does once started: what lives as long as the run stays out of the
    # collector's reach, so collections walk the records in flight, not the prepared requests
    gc.freeze()
    runs: dict[str, dict[str, list[float]]] = {}
    info: dict[str, Any] = {"before": machine_info(), "args": vars(args)}
    with EmbeddedBroker() as broker:
        pin_process(broker.pid, {1})
        asyncio.run(create_topics(broker.bootstrap_servers, ["inference-log"], 3))
        overrides: dict[str, Any] = {"bootstrap_servers": broker.bootstrap_servers}
        if args.compression is not None:
            overrides["compression"] = args.compression
        if args.linger_s is not None:
            overrides["linger_s"] = args.linger_s
        settings = FeatureLogSettings(**overrides)
        for repeat in range(args.repeats):
            for rate in args.rates:
                order = MODES if repeat % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    result = uvloop.run(
                        _drive(mode, rate, requests, broker.bootstrap_servers, settings, work)
                    )
                    runs.setdefault(str(rate), {}).setdefault(mode, []).append(
                        result["cpu_us_per_record"]
                    )
                print(f"[{repeat + 1}/{args.repeats}] {rate:.0f}/s: " + ", ".join(
                    f"{m} {runs[str(rate)][m][-1]:.1f}" for m in MODES), flush=True)  # fmt: skip
    info["after"] = machine_info()
    report = summarize(runs)
    out = RESULTS / f"featurelog-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({**info, "runs": runs, "summary": report}, indent=1))
    print(markdown(report))
    print(f"written {out}")


if __name__ == "__main__":
    main()
