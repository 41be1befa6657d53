"""A/B verdicts between two variants on a metric, valid under repeated looks.

The test is a mixture sequential probability ratio test (mSPRT; Johari, Pekelis and Walsh,
"Always valid inference", 2017) on the difference of the two variants' metric, b - a, with the
normal approximation: after each look, with the difference estimate d and its variance V,

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

is a likelihood ratio mixed over a N(0, tau^2) prior on the difference, a martingale under
"no difference", so by Ville's inequality P(Lambda ever >= 1/alpha) <= alpha however often it
is looked at. Inverting it gives a confidence sequence: the interval

    d +- sqrt(2 V (V + tau^2) / tau^2 * log(sqrt((V + tau^2) / V) / alpha))

covers the true difference at every look at once with probability 1 - alpha; the running
intersection of the intervals is kept. A winner is declared when the interval leaves zero.
``tau`` is the size of difference (in the metric's units) the test is tuned to find fastest.
Looks start once each arm has ``min_samples`` labelled rows (the normal approximation needs
them).

The approximation needs a difference that is asymptotically normal with a variance estimated
from running sums, so the supported metrics are means of per-row quantities, or averages of a
few such means over groups of rows (``METRICS``): accuracy (a correct indicator per row), macro
recall (the per-class mean of the indicator over rows of each true class), macro precision (over
rows of each predicted class), log loss (a loss per row), MAE (absolute error per row) and RMSE
(compared as the mean squared error, which orders variants as RMSE does; the difference and its
interval are in squared units). F1, ROC AUC and R2 are ratios or rank statistics of the whole
window and are refused: they have no per-row decomposition these running sums can carry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "AB_METRICS",
    "ABState",
    "UnsupportedMetricError",
    "Verdict",
    "ab_groups",
    "check_metric",
    "half_width",
    "look",
]

Decision = str  # "a_better", "b_better", "no_difference_yet"
Groups = list[list[float]]  # per group of rows: [rows, sum, sum of squares]

# metric -> (higher is better, the statistic compared)
AB_METRICS: dict[str, tuple[bool, str]] = {
    "accuracy": (True, "accuracy"),
    "macro_recall": (True, "macro_recall"),
    "macro_precision": (True, "macro_precision"),
    "log_loss": (False, "log_loss"),
    "mae": (False, "mae"),
    "rmse": (False, "mse"),
}
_INDICATORS = {"accuracy", "macro_recall", "macro_precision"}
_EPS = 1e-15


class UnsupportedMetricError(ValueError):
    """A metric the sequential test cannot compare."""


def check_metric(metric: str) -> str:
    """The metric, or a clear error naming the supported ones."""
    if metric not in AB_METRICS:
        raise UnsupportedMetricError(
            f"{metric!r} has no sequential A/B test (not a mean of per-row quantities); "
            f"supported: {', '.join(AB_METRICS)}"
        )
    return metric


def ab_groups(
    metric: str,
    label: np.ndarray,
    pred: np.ndarray,
    probs: np.ndarray | None,
    classes: int,
) -> Groups | None:
    """A window's labelled rows of one variant as the metric's running sums; None when the
    window lacks what the metric needs (log loss without probabilities)."""
    check_metric(metric)
    if metric in _INDICATORS:
        truth, predicted = label.astype(np.int64), pred.astype(np.int64)
        correct = (truth == predicted).astype(np.float64)
        if metric == "accuracy":
            s = float(correct.sum())
            return [[float(len(correct)), s, s]]
        by = truth if metric == "macro_recall" else predicted
        rows = np.bincount(by, minlength=classes)[:classes].astype(np.float64)
        hits = np.bincount(by, weights=correct, minlength=classes)[:classes]
        return [[float(rows[c]), float(hits[c]), float(hits[c])] for c in range(classes)]
    if metric == "log_loss":
        if probs is None or probs.shape != (len(label), classes):
            return None
        values = -np.log(np.clip(probs[np.arange(len(label)), label.astype(np.int64)], _EPS, 1))
    elif metric == "mae":
        values = np.abs(pred - label)
    else:  # rmse, compared as the mean squared error
        values = (pred - label) ** 2
    return [[float(len(values)), float(values.sum()), float((values**2).sum())]]


@dataclass
class ABState:
    """One pair's running sums and interval (kept in the monitor's state)."""

    metric: str = "accuracy"
    a: Groups = field(default_factory=list)
    b: Groups = field(default_factory=list)
    low: float = -math.inf
    high: float = math.inf
    looks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "a": self.a, "b": self.b, "looks": self.looks,
            # JSON has no infinities: no bound yet is null
            "low": None if math.isinf(self.low) else self.low,
            "high": None if math.isinf(self.high) else self.high,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ABState:
        """A stored state; one of the accuracy-only form (``n_a``, ``s_a``, ...) is read as
        accuracy's running sums."""
        low = data.get("low")
        high = data.get("high")
        if "n_a" in data:
            a = [[float(data["n_a"]), float(data["s_a"]), float(data["s_a"])]]
            b = [[float(data["n_b"]), float(data["s_b"]), float(data["s_b"])]]
            return cls("accuracy", a, b, float(low or -1.0), float(high or 1.0), int(data["looks"]))
        return cls(
            data["metric"], data["a"], data["b"],
            -math.inf if low is None else float(low), math.inf if high is None else float(high),
            int(data["looks"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """The comparison after the latest look."""

    metric: str
    higher_is_better: bool
    difference: float  # the metric of b minus that of a (RMSE: mean squared error's)
    low: float | None  # None: no look yet
    high: float | None
    decision: Decision
    samples_needed: int  # more labelled rows per arm expected before a decision (0: decided)
    looks: int
    n_a: int
    n_b: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "difference": self.difference,
            "low": self.low,
            "high": self.high,
            "decision": self.decision,
            "samples_needed": self.samples_needed,
            "looks": self.looks,
            "n_a": self.n_a,
            "n_b": self.n_b,
        }


def _add(total: Groups, more: Groups) -> None:
    if not total:
        total.extend([0.0, 0.0, 0.0] for _ in more)
    for group, (n, s, ss) in zip(total, more, strict=True):
        group[0] += n
        group[1] += s
        group[2] += ss


def _group_variance(metric: str, n: float, s: float, ss: float) -> float:
    """Variance of one group's mean."""
    if metric in _INDICATORS:
        # Laplace-smoothed proportion: a group of all-correct rows still has a variance
        p = (s + 1) / (n + 2)
        return p * (1 - p) / n
    spread = (ss - s * s / n) / (n - 1) if n > 1 else 0.0
    return max(spread, _EPS) / n


def _estimate(metric: str, a: Groups, b: Groups) -> tuple[float, float, float]:
    """(difference b - a, its variance, rows per arm the variance is for): averaged over the
    groups both arms have rows in."""
    shared = [(ga, gb) for ga, gb in zip(a, b, strict=True) if ga[0] > 0 and gb[0] > 0]
    if not shared:
        return 0.0, math.inf, 0.0
    k = len(shared)
    difference = sum(gb[1] / gb[0] - ga[1] / ga[0] for ga, gb in shared) / k
    variance = sum(
        _group_variance(metric, *ga) + _group_variance(metric, *gb) for ga, gb in shared
    ) / (k * k)
    return difference, variance, min(sum(g[0] for g in a), sum(g[0] for g in b))


def half_width(variance: float, alpha: float, tau: float) -> float:
    """Half-width of the mSPRT confidence sequence's interval at this variance."""
    t2 = tau * tau
    ratio = (variance + t2) / variance
    return math.sqrt(2 * variance * (variance + t2) / t2 * math.log(math.sqrt(ratio) / alpha))


def look(
    state: ABState,
    add_a: Groups,
    add_b: Groups,
    *,
    alpha: float,
    tau: float,
    min_samples: int,
    min_effect: float,
) -> Verdict:
    """Add a window's running sums of each arm (``ab_groups``) and look once."""
    metric = check_metric(state.metric)
    higher, _ = AB_METRICS[metric]
    _add(state.a, add_a)
    _add(state.b, add_b)
    n_a = int(sum(g[0] for g in state.a))
    n_b = int(sum(g[0] for g in state.b))
    difference, variance, rows = _estimate(metric, state.a, state.b)

    def verdict(decision: Decision, needed: int) -> Verdict:
        low = None if math.isinf(state.low) else state.low
        high = None if math.isinf(state.high) else state.high
        return Verdict(metric, higher, difference, low, high, decision, needed, state.looks,
                       n_a, n_b)  # fmt: skip

    if min(n_a, n_b) < min_samples or not math.isfinite(variance):
        return verdict("no_difference_yet", max(0, min_samples - min(n_a, n_b)))
    state.looks += 1
    width = half_width(variance, alpha, tau)
    state.low = max(state.low, difference - width)
    state.high = min(state.high, difference + width)
    if state.low > 0:
        decision = "b_better" if higher else "a_better"
    elif state.high < 0:
        decision = "a_better" if higher else "b_better"
    else:
        decision = "no_difference_yet"
    needed = 0
    if decision == "no_difference_yet":
        # the variance shrinks as 1/rows: rows * variance is the per-row spread
        needed = _samples_needed(rows, variance * rows, max(abs(difference), min_effect),
                                 alpha, tau)  # fmt: skip
    return verdict(decision, needed)


def _samples_needed(rows: float, spread: float, effect: float, alpha: float, tau: float) -> int:
    """Rows per arm (beyond those seen) at which the interval would be narrower than
    ``effect``, at the current spread: where a difference that large would be declared."""
    n = int(rows)
    high = max(n, 1)
    while half_width(spread / high, alpha, tau) >= effect and high < 10**9:
        high *= 2
    low = max(n, high // 2)
    while low < high:  # the smallest n whose interval is narrow enough
        mid = (low + high) // 2
        if half_width(spread / mid, alpha, tau) < effect:
            high = mid
        else:
            low = mid + 1
    return max(0, high - n)
