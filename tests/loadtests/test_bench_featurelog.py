"""The feature-log microbenchmark: its stages, and a run of its real path."""

from __future__ import annotations

from pathlib import Path

from gateway.featurelog.settings import FeatureLogSettings
from loadtests.bench_featurelog import MODES, _drive, _requests, markdown, summarize
from monitors.broker import EmbeddedBroker, create_topics


def test_stages_are_the_differences_of_modes_run_back_to_back() -> None:
    runs = {"2000.0": {"pace": [10.0, 12.0, 11.0], "build": [15.0, 16.0, 17.0],
                       "pack": [25.0, 27.0, 26.0], "kafka": [30.0, 40.0, 31.0]}}  # fmt: skip
    report = summarize(runs)
    stages = report["2000.0"]["stages"]
    assert stages["build"]["runs"] == [5.0, 4.0, 6.0]
    assert stages["submit, pack, encode"]["median"] == 10.0
    assert stages["compress, produce"]["runs"] == [5.0, 13.0, 5.0]
    assert stages["log in all"] == {"median": 20.0, "min": 20.0, "max": 28.0,
                                    "runs": [20.0, 28.0, 20.0]}  # fmt: skip
    assert "| 2,000/s | 5.0 (4.0-6.0) | 10.0 (9.0-11.0) | 5.0 (5.0-13.0) |" in markdown(report)


async def test_every_mode_runs_and_the_logging_ones_deliver_every_record(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    await create_topics(broker.bootstrap_servers, ["inference-log"], 3)
    settings = FeatureLogSettings(bootstrap_servers=broker.bootstrap_servers, linger_s=0.01)
    requests = _requests(300)
    for mode in MODES:
        for rate in (0.0, 5000.0):
            result = await _drive(mode, rate, requests, broker.bootstrap_servers, settings,
                                  tmp_path)  # fmt: skip
            assert result["cpu_us_per_record"] > 0, (mode, rate)
            assert result["delivered"] == (300 if mode in ("pack", "kafka") else 0), (mode, rate)
