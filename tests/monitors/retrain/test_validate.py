"""The validation gate: metrics side by side, McNemar's exact test, the margin."""

from __future__ import annotations

import numpy as np
import pytest

from monitors.retrain.dataset import Dataset
from monitors.retrain.validate import Scores, ValidationError, mcnemar, validate


def holdout(y: np.ndarray) -> Dataset:
    n = len(y)
    return Dataset(
        ["a"], np.zeros((n, 1), np.float32), y, np.arange(n, dtype=float), ["no", "yes"], n, 0, n
    )


def scores(labels: np.ndarray) -> Scores:
    probs = np.stack([1 - labels, labels], axis=1).astype(float) * 0.8 + 0.1
    return Scores(labels, probs)


def test_mcnemar_counts_the_rows_where_one_model_is_right() -> None:
    y = np.array([1, 1, 1, 1, 0, 0])
    champion = np.array([0, 0, 0, 1, 0, 1])
    candidate = np.array([1, 1, 1, 1, 0, 1])
    test = mcnemar(y, champion, candidate)
    assert test["candidate_only_correct"] == 3
    assert test["champion_only_correct"] == 0
    assert test["p_value"] == pytest.approx(0.25)  # two-sided, 3 of 3 at one half
    assert mcnemar(y, y, y)["p_value"] == 1.0


def test_a_better_candidate_passes_with_a_significant_difference() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    champion = np.where(rng.random(400) < 0.7, y, 1 - y)  # about 70% right
    candidate = np.where(rng.random(400) < 0.95, y, 1 - y)
    passed, report = validate(
        holdout(y), scores(champion), scores(candidate),
        primary_metric="accuracy", margin=0.0, alpha=0.05,
    )  # fmt: skip
    assert passed
    assert report["metrics"]["candidate"]["accuracy"] > report["metrics"]["champion"]["accuracy"]
    assert report["significance"]["significant"]
    assert np.array(report["confusion"]["candidate"]).sum() == 400
    assert report["holdout_rows"] == 400


def test_a_candidate_worse_by_more_than_the_margin_is_rejected_on_the_primary_metric() -> None:
    y = np.array([1] * 50 + [0] * 50)
    champion = y.copy()
    candidate = y.copy()
    candidate[:10] = 0  # misses ten positives: recall of class 1 falls, accuracy 0.9
    passed, report = validate(
        holdout(y), scores(champion), scores(candidate),
        primary_metric="macro_recall", margin=0.02, alpha=0.05,
    )  # fmt: skip
    assert not passed
    assert "below the champion's" in report["verdict"]
    assert report["difference"] == pytest.approx(-0.1)
    passed_wide, _ = validate(
        holdout(y), scores(champion), scores(candidate),
        primary_metric="macro_recall", margin=0.2, alpha=0.05,
    )  # fmt: skip
    assert passed_wide


def test_an_unknown_primary_metric_is_an_error() -> None:
    y = np.array([0, 1])
    with pytest.raises(ValidationError, match="primary metric"):
        validate(holdout(y), Scores(y, None), Scores(y, None),
                 primary_metric="roc_auc", margin=0, alpha=0.05)  # fmt: skip
