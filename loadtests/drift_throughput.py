"""How many log records per second one monitor process consumes and evaluates (30 features).

It builds the gateway's Kafka messages (single-row records, 100 per message, as the feature
log packs them), then times decoding them and feeding the windows (count windows of 5,000 rows,
each closed window evaluated against the profile) on one core, without Kafka in the loop.

``python -m loadtests.drift_throughput [--records 200000]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np
import orjson

from loadtests.drift_quality import NAMES, X, profile
from monitors.evaluate import DetectorConfig, evaluate
from monitors.schema import decode_records
from monitors.windows import Windows, WindowSpec


def messages(count: int, per_message: int = 100) -> list[bytes]:
    rng = np.random.default_rng(0)
    rows = X[rng.integers(0, len(X), count)].astype(np.float32)
    out = []
    for start in range(0, count, per_message):
        lines = []
        for i in range(start, min(start + per_message, count)):
            record = {
                "schema_version": 1,
                "request_id": f"r{i}",
                "time": 1.0 + i,
                "endpoint": "m",
                "model": "m",
                "version": "1",
                "variant": "default",
                "role": "primary",
                "rows": 1,
                "features": {name: [round(float(rows[i, j]), 4)] for j, name in enumerate(NAMES)},
                "outputs": {"label": [1], "probabilities": [[0.1, 0.9]]},
                "latency_s": 0.002,
                "status": "ok",
            }
            lines.append(orjson.dumps(record))
        out.append(b"\n".join(lines))
    return out


def run_once(batch: list[bytes]) -> tuple[float, int]:
    prof = profile()
    windows = Windows(WindowSpec("count", 5000, 5000), prof)
    config = DetectorConfig()
    started = time.perf_counter()
    offset = 0
    evaluated = 0
    for chunk in range(0, len(batch), 50):  # a consumer poll returns many messages at once
        records = []
        offsets = []
        for message in batch[chunk : chunk + 50]:
            decoded = decode_records(message)
            records.extend(decoded)
            offsets.extend([offset] * len(decoded))
            offset += 1
        for _, summary in windows.add(records, offsets):  # type: ignore[arg-type]
            evaluate(
                summary,
                prof,
                config,
                model="m",
                version="1",
                window_id="w",
                start_time=0,
                end_time=0,
            )
            evaluated += 1
    return time.perf_counter() - started, evaluated


def main() -> None:
    gc.freeze()  # as the monitor service does, see monitors/service.py
    gc.set_threshold(50_000, 20, 100)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    batch = messages(args.records)
    rates = []
    for _ in range(args.repeats):
        seconds, windows = run_once(batch)
        rates.append(args.records / seconds)
        print(
            f"{args.records} records, {windows} windows in {seconds:.2f} s: "
            f"{args.records / seconds:,.0f} records/s"
        )
    print(f"median {statistics.median(rates):,.0f} records/s on one core")


if __name__ == "__main__":
    main()
