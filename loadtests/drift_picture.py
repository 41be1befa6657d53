"""The drift report the README shows: the demo model's 30 features and predicted label, windows
of 500 rows from the monitor's own code path (``MonitorService.consume`` on messages packed as
the gateway packs them), four calm windows then four of bigger tumours (radius, perimeter and
area x1.6); ``python -m monitors report`` on the resulting history, as a table and as a page, and
the page's screenshot from headless Chromium.

``python -m loadtests.drift_picture [--out loadtests/results]`` writes ``drift-report.txt``,
``drift-report.html`` and ``drift-report.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from loadtests.drift_quality import NAMES, X, registered
from monitors.metrics import MonitorMetrics
from monitors.profile import build_profile
from monitors.schema import InferenceRecord, encode_records
from monitors.service import MonitorService
from monitors.settings import MonitorSettings

MODEL = "breast_cancer"
START = 1_795_000_000.0  # 2026-11-18, event time of the first record
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
]  # fmt: skip


def stream() -> list[InferenceRecord]:
    """2,000 calm requests, then 2,000 with bigger tumours, one a second."""
    rng = np.random.default_rng(0)
    rows = X[rng.integers(0, len(X), 4_000)].copy()
    rows[2_000:, [0, 2, 3]] *= 1.6
    return [
        {
            "schema_version": 2, "request_id": f"r{i}", "time": START + i, "endpoint": MODEL,
            "model": MODEL, "version": "1", "variant": "default", "role": "primary", "rows": 1,
            "status": "ok", "latency_s": 0.001,
            "features": {name: [float(row[j])] for j, name in enumerate(NAMES)},
            "outputs": {"label": [int(row[0] > 14)]},
        }
        for i, row in enumerate(rows)
    ]  # fmt: skip


async def build_history(registry: Path, state: Path) -> None:
    settings = MonitorSettings(
        registry_root=registry, state_dir=state, window={"by": "count", "size": 500, "slide": 500}
    )
    service = MonitorService(settings, MonitorMetrics(CollectorRegistry()))
    records = stream()
    messages = [
        ConsumerRecord("inference-log", 0, n, 0, 0, MODEL.encode(), value, None, 1, len(value), [])
        for n, value in enumerate(
            encode_records(records[i : i + 100]) for i in range(0, len(records), 100)
        )
    ]  # fmt: skip
    await service.consume(0, messages)
    service._save_audit()
    await service.webhooks.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        columns = {name: X[:, j] for j, name in enumerate(NAMES)}
        columns["prediction:label"] = (X[:, 0] > 14).astype(float)
        registered(Path(tmp) / "registry", MODEL, build_profile(columns))
        asyncio.run(build_history(Path(tmp) / "registry", Path(tmp) / "state"))
        page = args.out / "drift-report.html"
        report = subprocess.run(
            [sys.executable, "-m", "monitors", "report", "--state-dir", str(Path(tmp) / "state"),
             "--model", MODEL, "--version", "1", "--last", "8", "--html", str(page)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        table = report.stdout.rsplit("wrote", 1)[0].rstrip()
        (args.out / "drift-report.txt").write_text(table + "\n")
        print(table)
        chromium = shutil.which("chromium")
        if chromium is None:
            sys.exit("Debian's chromium is needed for the screenshot (apt-get install chromium)")
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={Path(tmp) / 'browser'}",
             "--window-size=1100,1250", f"--screenshot={args.out / 'drift-report.png'}",
             page.resolve().as_uri()],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        print(f"wrote {page}, {args.out / 'drift-report.png'}")


if __name__ == "__main__":
    main()
