"""Realized performance from joined labels: classification and regression metrics with
confidence intervals, and the degradation test against a version's validation metrics.

Intervals: Wilson for proportions (accuracy, per-class precision and recall); a bootstrap on
the confusion matrix's cells for F1 (per class and macro) and macro precision/recall; a row
bootstrap for ROC AUC and R2; the normal interval of a mean for log loss, MAE and MSE (RMSE is
the square root of MSE's). Bootstraps draw from a generator seeded by the data's size, so the
same window gives the same interval wherever and whenever it is evaluated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm

from registry_client import Calibration

__all__ = [
    "HIGHER_IS_BETTER",
    "calibration_table",
    "classification_metrics",
    "degraded",
    "interval_of",
    "precision_recall_f1",
    "regression_metrics",
    "roc_auc",
    "wilson",
    "z_score",
]

_BOOTSTRAP = 200
_EPS = 1e-15
# Which way is better, for the degradation test and the A/B comparison.
HIGHER_IS_BETTER = {
    "accuracy": True,
    "macro_precision": True,
    "macro_recall": True,
    "macro_f1": True,
    "roc_auc": True,
    "log_loss": False,
    "mae": False,
    "rmse": False,
    "r2": True,
}

Interval = dict[str, float]


def z_score(alpha: float) -> float:
    return float(norm.ppf(1 - alpha / 2))


def wilson(successes: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion (0, 1 when there is no data)."""
    if n <= 0:
        return 0.0, 1.0
    z = z_score(alpha)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def interval_of(value: float, low: float, high: float) -> Interval:
    return {"value": float(value), "low": float(low), "high": float(high)}


def _mean_interval(values: np.ndarray, alpha: float) -> Interval:
    mean = float(values.mean())
    half = (
        z_score(alpha) * float(values.std(ddof=1)) / np.sqrt(len(values)) if len(values) > 1 else 0
    )
    return interval_of(mean, mean - half, mean + half)


def _percentiles(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    if np.isnan(samples).all():  # undefined in every draw (ROC AUC of one class): no interval
        return float("nan"), float("nan")
    low, high = np.nanpercentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return float(low), float(high)


def precision_recall_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 of confusion matrices (..., true, predicted); 0 where
    undefined, as scikit-learn's zero_division=0 gives."""
    diagonal = np.diagonal(confusion, axis1=-2, axis2=-1)
    predicted = confusion.sum(axis=-2)
    actual = confusion.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, diagonal / np.maximum(predicted, 1), 0.0)
        recall = np.where(actual > 0, diagonal / np.maximum(actual, 1), 0.0)
        total = precision + recall
        f1 = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
    return precision, recall, f1


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by ranks (ties count half); NaN with one class only."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average ranks of ties: the first and last position of each run of equal scores
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    run_ranks = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(run_ranks, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _macro_auc(probs: np.ndarray, y: np.ndarray) -> float:
    classes = probs.shape[1]
    if classes == 2:
        return roc_auc(probs[:, 1], y == 1)
    values = [roc_auc(probs[:, c], y == c) for c in range(classes)]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray | None,
    classes: int,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Accuracy, per-class and macro precision/recall/F1, ROC AUC and log loss (with the class
    probabilities), the confusion matrix (rows: true class), each with its interval."""
    n = len(y_true)
    y_true = y_true.astype(np.int64)
    y_pred = y_pred.astype(np.int64)
    confusion = np.bincount(y_true * classes + y_pred, minlength=classes * classes).reshape(
        classes, classes
    )
    correct = int(np.trace(confusion))
    result: dict[str, Any] = {
        "rows": n,
        "accuracy": interval_of(correct / n if n else float("nan"), *wilson(correct, n, alpha)),
        "confusion": confusion.tolist(),
    }
    if n == 0:
        return result
    precision, recall, f1 = precision_recall_f1(confusion)
    # the bootstrap of rows, drawn as counts per confusion cell
    rng = np.random.default_rng(n)
    draws = rng.multinomial(n, confusion.ravel() / n, size=_BOOTSTRAP).reshape(
        _BOOTSTRAP, classes, classes
    )
    b_precision, b_recall, b_f1 = precision_recall_f1(draws)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    result["per_class"] = [
        {
            "precision": interval_of(precision[c], *wilson(confusion[c, c], predicted[c], alpha)),
            "recall": interval_of(recall[c], *wilson(confusion[c, c], actual[c], alpha)),
            "f1": interval_of(f1[c], *_percentiles(b_f1[:, c], alpha)),
            "support": int(actual[c]),
        }
        for c in range(classes)
    ]
    for name, point, samples in (
        ("macro_precision", precision, b_precision),
        ("macro_recall", recall, b_recall),
        ("macro_f1", f1, b_f1),
    ):
        result[name] = interval_of(point.mean(), *_percentiles(samples.mean(axis=1), alpha))
    if probs is not None and probs.shape == (n, classes):
        auc = _macro_auc(probs, y_true)
        rows = rng.integers(0, n, size=(_BOOTSTRAP // 2, n))
        samples = np.array([_macro_auc(probs[r], y_true[r]) for r in rows])
        result["roc_auc"] = interval_of(auc, *_percentiles(samples, alpha))
        chosen = np.clip(probs[np.arange(n), y_true], _EPS, 1.0)
        result["log_loss"] = _mean_interval(-np.log(chosen), alpha)
    return result


def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, alpha: float = 0.05
) -> dict[str, Any]:
    """MAE, RMSE and R2, with intervals."""
    n = len(y_true)
    result: dict[str, Any] = {"rows": n}
    if n == 0:
        return result
    errors = y_pred - y_true
    result["mae"] = _mean_interval(np.abs(errors), alpha)
    mse = _mean_interval(errors**2, alpha)
    result["rmse"] = interval_of(
        np.sqrt(mse["value"]), np.sqrt(max(mse["low"], 0.0)), np.sqrt(mse["high"])
    )

    def r2(t: np.ndarray, p: np.ndarray) -> float:
        total = float(((t - t.mean()) ** 2).sum())
        return 1 - float(((p - t) ** 2).sum()) / total if total > 0 else float("nan")

    rows = np.random.default_rng(n).integers(0, n, size=(_BOOTSTRAP // 2, n))
    samples = np.array([r2(y_true[r], y_pred[r]) for r in rows])
    result["r2"] = interval_of(r2(y_true, y_pred), *_percentiles(samples, alpha))
    return result


def degraded(result: dict[str, Any], metric: str, validation: float, margin: float) -> bool | None:
    """Whether the window's metric is worse than the validation value by more than ``margin``
    with significance (its whole interval beyond); None when the window lacks the metric."""
    interval = result.get(metric)
    if not isinstance(interval, dict) or not np.isfinite(interval["value"]):
        return None
    if HIGHER_IS_BETTER[metric]:
        return bool(interval["high"] < validation - margin)
    return bool(interval["low"] > validation + margin)


def calibration_table(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> Calibration:
    """Per class and bin of its predicted probability (equal-width bins on [0, 1]): the observed
    frequency of the class, the rows, and their mean predicted probability (an empty bin keeps
    its centre for both): a reliability table."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    rates: list[list[float]] = []
    counts: list[list[int]] = []
    means: list[list[float]] = []
    for c in range(probs.shape[1]):
        where = np.clip(np.searchsorted(edges, probs[:, c], side="right") - 1, 0, bins - 1)
        hits = np.bincount(where, weights=(y_true == c).astype(float), minlength=bins)
        scores = np.bincount(where, weights=probs[:, c].astype(float), minlength=bins)
        n = np.bincount(where, minlength=bins)
        rates.append(np.where(n > 0, hits / np.maximum(n, 1), centres).tolist())
        means.append(np.where(n > 0, scores / np.maximum(n, 1), centres).tolist())
        counts.append(n.tolist())
    return Calibration(edges=edges.tolist(), rates=rates, counts=counts, means=means)
