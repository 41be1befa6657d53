"""Label-free performance estimation for classifiers (confidence-based: CBPE).

A calibrated classifier's probability of its predicted class is the chance that the prediction
is right, so over a window the expected accuracy is the mean of those probabilities, and the
expected confusion matrix puts each row's probability mass on (true class c, predicted class):
expected precision, recall and F1 per class follow, and ROC AUC with each row counted as a
positive with weight p and a negative with weight 1 - p.

Assumptions (stated on ``/status``): the probabilities are calibrated (on the reference set's
reliability table when the version's metadata carries one), and the relation between inputs
and labels is the one the model learnt: covariate shift only, no concept drift. Under concept
drift the estimate stays where the model believes it is while the realized value falls, which
is why the two are reported side by side. The interval is that of the realized accuracy of
the window's rows if the probabilities are right (a sum of independent Bernoulli draws).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from monitors.performance import interval_of, precision_recall_f1, z_score
from registry_client import Calibration

__all__ = ["ASSUMPTIONS", "calibrate", "estimate_classification"]

ASSUMPTIONS = (
    "calibrated probabilities (the version's reliability table applied when it has one) and "
    "covariate shift only: no concept drift"
)


def calibrate(probs: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """Probabilities mapped through the reliability table, rows renormalised."""
    if calibration is None or len(calibration.rates) != probs.shape[1]:
        return probs
    edges = np.asarray(calibration.edges)
    bins = len(edges) - 1
    out = np.empty_like(probs, dtype=np.float64)
    for c, rates in enumerate(calibration.rates):
        where = np.clip(np.searchsorted(edges, probs[:, c], side="right") - 1, 0, bins - 1)
        out[:, c] = np.asarray(rates)[where]
    total = out.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.where(total > 0, total, 1), probs)


def _weighted_auc(scores: np.ndarray, weights: np.ndarray) -> float:
    """ROC AUC with each row a positive of weight w and a negative of weight 1 - w."""
    order = np.argsort(scores, kind="mergesort")
    s, w = scores[order], weights[order]
    negatives = 1 - w
    total_pos, total_neg = w.sum(), negatives.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    # For each run of equal scores: negatives strictly below, and half of those tied.
    _, first = np.unique(s, return_index=True)
    neg_runs = np.add.reduceat(negatives, first)
    pos_runs = np.add.reduceat(w, first)
    below = np.cumsum(neg_runs) - neg_runs
    return float((pos_runs * (below + neg_runs / 2)).sum() / (total_pos * total_neg))


def estimate_classification(
    probs: np.ndarray, calibration: Calibration | None = None, alpha: float = 0.05
) -> dict[str, Any]:
    """Expected accuracy (with its interval), macro precision/recall/F1 and ROC AUC."""
    n, classes = probs.shape
    result: dict[str, Any] = {"rows": n, "assumptions": ASSUMPTIONS}
    if n == 0:
        return result
    predicted = np.argmax(probs, axis=1)  # the model's own choice, before calibration
    p = calibrate(probs.astype(np.float64), calibration)
    right = p[np.arange(n), predicted]
    accuracy = float(right.mean())
    half = z_score(alpha) * float(np.sqrt((right * (1 - right)).sum())) / n
    result["accuracy"] = interval_of(accuracy, max(0.0, accuracy - half), min(1.0, accuracy + half))
    # expected confusion: true class c (probability mass), predicted class j
    confusion = np.zeros((classes, classes))
    for j in range(classes):
        confusion[:, j] = p[predicted == j].sum(axis=0)
    precision, recall, f1 = precision_recall_f1(confusion)
    for name, values in (
        ("macro_precision", precision),
        ("macro_recall", recall),
        ("macro_f1", f1),
    ):
        result[name] = {"value": float(values.mean())}
    if classes == 2:
        result["roc_auc"] = {"value": _weighted_auc(probs[:, 1], p[:, 1])}
    else:
        aucs = [_weighted_auc(probs[:, c], p[:, c]) for c in range(classes)]
        finite = [a for a in aucs if np.isfinite(a)]
        result["roc_auc"] = {"value": float(np.mean(finite)) if finite else float("nan")}
    return result
