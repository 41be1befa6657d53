from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

from monitors.abtest import ABState, UnsupportedMetricError, ab_groups, check_metric, look
from monitors.estimate import estimate_classification
from monitors.performance import (
    calibration_table,
    classification_metrics,
    degraded,
    regression_metrics,
    wilson,
)
from monitors.performance_settings import PerformanceSettings
from registry_client import Calibration, ValidationReport


def _classifier_data(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), size=n)
    y_pred = probs.argmax(axis=1)
    y_true = np.array([rng.choice(classes, p=p) for p in probs])
    return y_true, y_pred, probs


def test_classification_metrics_match_scikit_learn() -> None:
    for classes in (2, 3):
        y_true, y_pred, probs = _classifier_data(2000, classes, seed=classes)
        result = classification_metrics(y_true, y_pred, probs, classes)
        assert result["accuracy"]["value"] == accuracy_score(y_true, y_pred)
        assert result["confusion"] == confusion_matrix(y_true, y_pred).tolist()
        for name, ours in (("precision", precision_score), ("recall", recall_score)):
            expected = ours(y_true, y_pred, average=None, zero_division=0)
            got = [c[name]["value"] for c in result["per_class"]]
            np.testing.assert_allclose(got, expected)
        np.testing.assert_allclose(
            result["macro_f1"]["value"], f1_score(y_true, y_pred, average="macro")
        )
        auc = (
            roc_auc_score(y_true, probs[:, 1])
            if classes == 2
            else roc_auc_score(y_true, probs, multi_class="ovr", average="macro")
        )
        np.testing.assert_allclose(result["roc_auc"]["value"], auc)
        np.testing.assert_allclose(result["log_loss"]["value"], log_loss(y_true, probs))
        for metric in ("accuracy", "macro_f1", "roc_auc", "log_loss"):
            interval = result[metric]
            assert interval["low"] <= interval["value"] <= interval["high"]


def test_labels_of_one_class_give_no_roc_auc_and_no_warning() -> None:
    # a labelled window (or a retraining job's held-out rows) of one class: ROC AUC is
    # undefined, which its interval said with an "All-NaN slice" RuntimeWarning (an error
    # where warnings are errors: the retraining worker's job failed on it)
    y_true = np.ones(200, dtype=np.int64)
    probs = np.column_stack([np.linspace(0, 1, 200), 1 - np.linspace(0, 1, 200)])
    result = classification_metrics(y_true, probs.argmax(axis=1), probs, 2)
    assert np.isnan(result["roc_auc"]["value"])
    assert np.isnan(result["roc_auc"]["low"])
    assert np.isnan(result["roc_auc"]["high"])
    assert result["accuracy"]["value"] == 0.5


def test_regression_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.normal(size=500)
    y_pred = y_true + rng.normal(scale=0.3, size=500)
    result = regression_metrics(y_true, y_pred)
    np.testing.assert_allclose(result["mae"]["value"], mean_absolute_error(y_true, y_pred))
    np.testing.assert_allclose(result["rmse"]["value"], mean_squared_error(y_true, y_pred) ** 0.5)
    np.testing.assert_allclose(result["r2"]["value"], r2_score(y_true, y_pred))


def test_wilson_interval_covers_the_proportion_and_shrinks() -> None:
    low, high = wilson(90, 100)
    assert low < 0.9 < high
    low2, high2 = wilson(900, 1000)
    assert high2 - low2 < high - low
    assert wilson(0, 0) == (0.0, 1.0)


def test_degradation_needs_the_whole_interval_below_validation_minus_margin() -> None:
    window = {"accuracy": {"value": 0.80, "low": 0.75, "high": 0.85}}
    assert degraded(window, "accuracy", 0.95, 0.02) is True
    assert degraded(window, "accuracy", 0.86, 0.02) is False
    losses = {"log_loss": {"value": 0.5, "low": 0.4, "high": 0.6}}
    assert degraded(losses, "log_loss", 0.2, 0.1) is True
    assert degraded({}, "accuracy", 0.9, 0.0) is None


def test_estimate_tracks_the_accuracy_of_calibrated_probabilities() -> None:
    y_true, _, probs = _classifier_data(5000, 2, seed=7)
    estimate = estimate_classification(probs)
    realized = float((probs.argmax(axis=1) == y_true).mean())
    assert estimate["accuracy"]["low"] <= realized <= estimate["accuracy"]["high"]


def test_calibration_table_corrects_overconfident_probabilities() -> None:
    rng = np.random.default_rng(3)
    true_p = rng.uniform(size=20_000)
    y = (rng.uniform(size=true_p.size) < true_p).astype(int)
    sharp = np.clip((true_p - 0.5) * 1.8 + 0.5, 0, 1)  # overconfident
    probs = np.column_stack([1 - sharp, sharp])
    calibration = calibration_table(y, probs)
    realized = float((probs.argmax(axis=1) == y).mean())
    raw = estimate_classification(probs)["accuracy"]["value"]
    calibrated = estimate_classification(probs, calibration)["accuracy"]["value"]
    assert abs(calibrated - realized) < abs(raw - realized)
    assert abs(calibrated - realized) < 0.01


def test_estimate_interval_carries_the_reliability_tables_own_error() -> None:
    y_val, _, val_probs = _classifier_data(600, 2, seed=11)
    _, _, probs = _classifier_data(20_000, 2, seed=12)
    table = calibration_table(y_val, val_probs)
    bigger = calibration_table(*_classifier_data(60_000, 2, seed=13)[::2])
    no_counts = table.model_copy(update={"counts": None})

    def width(calibration: Calibration | None) -> float:
        interval = estimate_classification(probs, calibration)["accuracy"]
        return float(interval["high"] - interval["low"])

    # 20,000 rows: the sampling part alone is narrow; 600 held-out rows dominate it
    assert width(table) > 2 * width(no_counts)
    assert width(no_counts) < width(bigger) < width(table)


def test_estimate_interval_covers_with_small_reliability_tables() -> None:
    # overconfident scores, corrected by a table from only 400 held-out rows: the table's error
    # is as large as the window's sampling error, and the interval must hold both
    rng = np.random.default_rng(5)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        true_p = rng.beta(0.7, 0.7, size=n)
        y = (rng.uniform(size=n) < true_p).astype(int)
        sharp = np.clip((true_p - 0.5) * 1.6 + 0.5, 0, 1)
        return y, np.column_stack([1 - sharp, sharp])

    covered = 0
    trials = 200
    for _ in range(trials):
        table = calibration_table(*draw(400))
        y, probs = draw(2000)
        interval = estimate_classification(probs, table)["accuracy"]
        covered += interval["low"] <= float((probs.argmax(axis=1) == y).mean()) <= interval["high"]
    assert covered / trials >= 0.9


def test_ab_test_declares_the_better_variant_and_not_equal_ones() -> None:
    rng = np.random.default_rng(0)
    state = ABState()
    verdict = None
    for _ in range(100):
        a = int(rng.binomial(200, 0.80))
        b = int(rng.binomial(200, 0.90))
        verdict = look(state, [[200, a, a]], [[200, b, b]], alpha=0.05, tau=0.03, min_samples=100,
                       min_effect=0.02)  # fmt: skip
        if verdict.decision != "no_difference_yet":
            break
    assert verdict is not None
    assert verdict.decision == "b_better"
    assert verdict.low is not None
    assert verdict.low > 0
    assert verdict.samples_needed == 0
    equal = ABState()
    for _ in range(5):
        same = look(equal, [[100, 90, 90]], [[100, 90, 90]], alpha=0.05, tau=0.03, min_samples=100,
                    min_effect=0.02)  # fmt: skip
    assert same.decision == "no_difference_yet"
    assert same.samples_needed > 0


def _run(metric: str, draw_a: Any, draw_b: Any, looks: int, seed: int, classes: int = 0) -> Any:
    rng = np.random.default_rng(seed)
    state = ABState(metric)
    verdict = None
    for _ in range(looks):
        groups = []
        for draw in (draw_a, draw_b):
            label, pred, probs = draw(rng)
            groups.append(ab_groups(metric, label, pred, probs, classes))
        assert groups[0] is not None
        assert groups[1] is not None
        verdict = look(state, groups[0], groups[1], alpha=0.05, tau=0.03, min_samples=100,
                       min_effect=0.02)  # fmt: skip
        if verdict.decision != "no_difference_yet":
            break
    return verdict


def _regressor(error: float) -> Any:
    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, None]:
        truth = rng.normal(size=300)
        return truth, truth + rng.normal(scale=error, size=300), None

    return draw


def _classifier(accuracy_by_class: list[float]) -> Any:
    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        truth = rng.integers(0, 3, size=300)
        right = rng.uniform(size=300) < np.asarray(accuracy_by_class)[truth]
        pred = np.where(right, truth, (truth + 1) % 3)
        probs = np.full((300, 3), 0.1)
        probs[np.arange(300), pred] = 0.8
        return truth.astype(float), pred.astype(float), probs

    return draw


def test_ab_test_on_losses_declares_the_variant_with_the_lower_loss() -> None:
    for metric in ("mae", "rmse"):
        verdict = _run(metric, _regressor(0.30), _regressor(0.25), 50, seed=1)
        assert verdict.decision == "b_better", metric
        assert verdict.higher_is_better is False
        assert verdict.difference < 0  # b's error minus a's
    worse = _run("log_loss", _classifier([0.9, 0.9, 0.9]), _classifier([0.8, 0.8, 0.8]), 50,
                 seed=2, classes=3)  # fmt: skip
    assert worse.decision == "a_better"


def test_ab_test_on_macro_recall_weighs_classes_equally() -> None:
    # b is better on the one class a fails: macro recall sees it
    verdict = _run("macro_recall", _classifier([0.9, 0.9, 0.6]), _classifier([0.9, 0.9, 0.8]),
                   50, seed=3, classes=3)  # fmt: skip
    assert verdict.decision == "b_better"
    assert verdict.metric == "macro_recall"


def test_ab_test_on_equal_regressors_rarely_declares_a_winner() -> None:
    decided = sum(
        _run("mae", _regressor(0.3), _regressor(0.3), 30, seed=100 + s).decision
        != "no_difference_yet"
        for s in range(60)
    )
    assert decided <= 6  # alpha 0.05 of 60 is 3; a binomial tail above 6 has p < 0.03


def test_unsupported_ab_metrics_are_refused_when_configured() -> None:
    for metric in ("macro_f1", "roc_auc", "r2", "nonsense"):
        with pytest.raises(ValidationError, match=f"performance.ab.metric '{metric}' has no"):
            PerformanceSettings(ab={"metric": metric})
        with pytest.raises(UnsupportedMetricError, match="supported: accuracy"):
            check_metric(metric)
    assert PerformanceSettings(ab={"metric": "rmse"}).ab.metric == "rmse"
    with pytest.raises(ValidationError, match="primary_metric 'rmse' is not a classification"):
        ValidationReport(task="classification", rows=1, metrics={}, primary_metric="rmse")
    report = ValidationReport(task="regression", rows=1, metrics={})
    assert report.primary == "mae"


def test_a_stored_accuracy_only_state_is_read_as_accuracy_sums() -> None:
    state = ABState.from_dict(
        {"n_a": 200, "s_a": 180, "n_b": 200, "s_b": 190, "low": -0.1, "high": 0.2, "looks": 2}
    )
    assert state.metric == "accuracy"
    assert state.a == [[200.0, 180.0, 180.0]]
    assert ABState.from_dict(state.to_dict()) == state
