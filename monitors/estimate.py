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
is why the two are reported side by side.

The accuracy's interval has two parts. The window's rows are a sum of Bernoulli draws with the
estimated probabilities (variance sum p(1 - p) / n^2). The reliability table is itself an
estimate from held-out rows: each rate is a proportion of its bin's rows, with the variance of
its Beta posterior (uniform prior, so an empty or all-one bin still has one), and the delta
method carries it to the estimate. Bins of one class are disjoint sets of rows, so their
errors add as independent; the classes' tables come from the same rows (for two classes one
mirrors the other), so their parts add as fully correlated (standard deviations summed), which
is exact for two classes and an upper bound for more. A table without counts gives the
sampling part only.
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


def _neighbours(probs: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the table's point at or below the probability (``low``; the first point when
    below it) and the weight of the next one (0 beyond the last): the table read as the line
    through its points."""
    bins = len(points)
    if bins == 1:
        return np.zeros(probs.shape, dtype=np.int64), np.zeros(probs.shape)
    low = np.clip(np.searchsorted(points, probs, side="right") - 1, 0, bins - 2)
    gap = np.maximum(points[low + 1] - points[low], 1e-12)
    weight = np.clip((probs - points[low]) / gap, 0.0, 1.0)
    return low, weight


def _rates(
    probs: np.ndarray, calibration: Calibration
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows' calibrated probabilities per class, their points, the weights of the next
    points). Each class's table is a correction: at a bin's mean predicted probability the
    class is seen with the bin's rate, so a probability is moved by the observed offset (rate
    minus mean probability) interpolated between the bins, and clipped to [0, 1]. Near 0 and 1,
    where a shifted window may put many rows the held-out set had few of, an offset keeps a
    probability of 0.999 near 0.999 instead of at the outer bin's rate."""
    edges = np.asarray(calibration.edges)
    centres = (edges[:-1] + edges[1:]) / 2
    rates = np.asarray(calibration.rates)
    means = np.asarray(calibration.means) if calibration.means is not None else None
    classes = probs.shape[1]
    q = np.empty_like(probs, dtype=np.float64)
    low = np.empty(probs.shape, dtype=np.int64)
    weight = np.empty(probs.shape)
    for c in range(classes):
        # a bin's mean lies in the bin (an empty bin's is its centre): the points are in order
        points = centres if means is None else means[c]
        offsets = rates[c] - points
        lo, w = _neighbours(probs[:, c], points)
        hi = np.minimum(lo + 1, len(points) - 1)
        q[:, c] = probs[:, c] + (1 - w) * offsets[lo] + w * offsets[hi]
        low[:, c], weight[:, c] = lo, w
    return np.clip(q, 0.0, 1.0), low, weight


def calibrate(probs: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """Probabilities mapped through the reliability table, rows renormalised."""
    if calibration is None or len(calibration.rates) != probs.shape[1]:
        return probs
    out, _, _ = _rates(probs, calibration)
    total = out.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.where(total > 0, total, 1), probs)


def _calibration_variance(
    probs: np.ndarray, predicted: np.ndarray, calibration: Calibration | None
) -> float:
    """Variance the reliability table's own error adds to the expected accuracy (0 without a
    table, or without the counts behind it)."""
    if calibration is None or calibration.counts is None:
        return 0.0
    if len(calibration.rates) != probs.shape[1]:
        return 0.0
    n, classes = probs.shape
    q, low, weight = _rates(probs, calibration)
    rates = np.asarray(calibration.rates)
    counts = np.asarray(calibration.counts, dtype=np.float64)
    total = q.sum(axis=1)
    usable = total > 0  # rows the table leaves alone (all rates 0) do not depend on it
    right = np.where(usable, q[np.arange(n), predicted] / np.where(usable, total, 1), 0.0)
    bins = rates.shape[1]
    # Beta(h + 1, n - h + 1) posterior variance of each rate
    a = rates * counts + 1
    b = counts - rates * counts + 1
    variance = a * b / ((a + b) ** 2 * (a + b + 1))
    spread = 0.0
    for c in range(classes):
        # d right_i / d q_ic = ([c is the predicted class] - right_i) / total_i, and q_ic leans
        # on its two bins by (1 - weight, weight)
        slope = np.where(usable, ((predicted == c) - right) / np.where(usable, total, 1), 0.0)
        upper = np.minimum(low[:, c] + 1, bins - 1)
        gradient = (
            np.bincount(low[:, c], weights=slope * (1 - weight[:, c]), minlength=bins)
            + np.bincount(upper, weights=slope * weight[:, c], minlength=bins)
        ) / n
        spread += float(np.sqrt((gradient**2 * variance[c]).sum()))
    return spread**2


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
    sampling = float((right * (1 - right)).sum()) / (n * n)
    table = _calibration_variance(probs.astype(np.float64), predicted, calibration)
    half = z_score(alpha) * float(np.sqrt(sampling + table))
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
