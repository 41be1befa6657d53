from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from monitors.join import JoinCounts, JoinStore
from monitors.judge import WindowJudge
from monitors.performance_settings import PerformanceSettings
from registry_client import ValidationReport


def _judge_regressors(
    tmp_path: Path, primary: tuple[str | None, str | None], ab: dict[str, object] | None = None
) -> dict[str, Any]:
    """Two regressor variants, b with the smaller errors, judged over ten windows."""
    settings = PerformanceSettings(
        window={"size_s": 60, "settle_s": 0}, ab={"min_samples": 50, **(ab or {})}
    )
    store = JoinStore(tmp_path / "p0.sqlite")
    judge = WindowJudge(settings, store)
    streams = [store.stream("m", "1", "a", 0), store.stream("m", "2", "b", 0)]
    reports: dict[tuple[str, str], ValidationReport | None] = {
        ("m", version): ValidationReport(
            task="regression", rows=100, metrics={"mae": 0.2}, primary_metric=metric
        )
        for version, metric in zip(("1", "2"), primary, strict=True)
    }
    rng = np.random.default_rng(0)
    for window in range(10):
        predictions, labels = [], []
        for stream, error in zip(streams, (0.4, 0.2), strict=True):
            for i in range(300):
                rid = f"{stream.variant}-{window}-{i}"
                truth = float(rng.normal())
                predictions.append(
                    (
                        rid,
                        0,
                        stream.id,
                        window * 60 + i * 0.1,
                        truth + rng.normal(scale=error),
                        None,
                    )
                )
                labels.append((rid, 0, truth, window * 60 + 1.0))
        store.add_predictions(predictions)
        store.add_labels(labels)
        judge.judge("m", window, streams, reports)
    store.commit({}, JoinCounts())
    store.close()
    pairs: dict[str, Any] = judge.verdicts["m"]
    return pairs


def test_variants_are_compared_on_the_versions_primary_metric(tmp_path: Path) -> None:
    pair = _judge_regressors(tmp_path / "1", ("rmse", "rmse"))["a/1|b/2"]
    assert pair["metric"] == "rmse"
    assert pair["higher_is_better"] is False
    assert pair["decision"] == "b_better"
    assert pair["high"] < 0  # b's mean squared error minus a's
    default = _judge_regressors(tmp_path / "2", (None, None))["a/1|b/2"]
    assert default["metric"] == "mae"  # a regressor's default
    assert default["decision"] == "b_better"


def test_differing_primary_metrics_are_named_unless_the_monitor_sets_one(tmp_path: Path) -> None:
    pair = _judge_regressors(tmp_path / "1", ("mae", "r2"))["a/1|b/2"]
    assert pair["metric"] is None
    assert "primary metrics differ (mae, r2)" in pair["error"]
    unsupported = _judge_regressors(tmp_path / "2", ("r2", "r2"))["a/1|b/2"]
    assert "'r2' has no sequential A/B test" in unsupported["error"]
    chosen = _judge_regressors(tmp_path / "3", ("mae", "r2"), ab={"metric": "mae"})["a/1|b/2"]
    assert (chosen["metric"], chosen["decision"]) == ("mae", "b_better")
