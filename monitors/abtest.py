"""A/B verdicts between two variants on a proportion (accuracy), valid under repeated looks.

The test is a mixture sequential probability ratio test (mSPRT; Johari, Pekelis and Walsh,
"Always valid inference", 2017) on the difference of the two accuracies, b - a, with the
normal approximation: after each look, with the difference estimate d and its variance V,

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

is a likelihood ratio mixed over a N(0, tau^2) prior on the difference, a martingale under
"no difference", so by Ville's inequality P(Lambda ever >= 1/alpha) <= alpha however often it
is looked at. Inverting it gives a confidence sequence: the interval

    d +- sqrt(2 V (V + tau^2) / tau^2 * log(sqrt((V + tau^2) / V) / alpha))

covers the true difference at every look at once with probability 1 - alpha; the running
intersection of the intervals is kept. A winner is declared when the interval leaves zero.
``tau`` is the size of difference the test is tuned to find fastest. Looks start once each arm
has ``min_samples`` labelled rows (the normal approximation needs them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["ABState", "Verdict", "half_width", "look"]

Decision = str  # "a_better", "b_better", "no_difference_yet"


@dataclass
class ABState:
    """One pair's running totals and interval (kept in the monitor's state)."""

    n_a: int = 0
    s_a: int = 0
    n_b: int = 0
    s_b: int = 0
    low: float = -1.0
    high: float = 1.0
    looks: int = 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The comparison after the latest look."""

    difference: float  # accuracy of b minus accuracy of a
    low: float
    high: float
    decision: Decision
    samples_needed: int  # more labelled rows per arm expected before a decision (0: decided)
    looks: int
    n_a: int
    n_b: int

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _variance(n_a: int, s_a: int, n_b: int, s_b: int) -> float:
    # Laplace-smoothed proportions: a window of all-correct rows still has a variance
    p_a, p_b = (s_a + 1) / (n_a + 2), (s_b + 1) / (n_b + 2)
    return p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b


def half_width(variance: float, alpha: float, tau: float) -> float:
    """Half-width of the mSPRT confidence sequence's interval at this variance."""
    t2 = tau * tau
    ratio = (variance + t2) / variance
    return math.sqrt(2 * variance * (variance + t2) / t2 * math.log(math.sqrt(ratio) / alpha))


def look(
    state: ABState,
    add_a: tuple[int, int],
    add_b: tuple[int, int],
    *,
    alpha: float,
    tau: float,
    min_samples: int,
    min_effect: float,
) -> Verdict:
    """Add a window's (labelled rows, correct rows) of each arm and look once."""
    state.n_a += add_a[0]
    state.s_a += add_a[1]
    state.n_b += add_b[0]
    state.s_b += add_b[1]
    n_a, n_b = state.n_a, state.n_b
    difference = (state.s_b / n_b if n_b else 0.0) - (state.s_a / n_a if n_a else 0.0)
    if min(n_a, n_b) < min_samples:
        needed = min_samples - min(n_a, n_b)
        return Verdict(difference, state.low, state.high, "no_difference_yet", needed,
                       state.looks, n_a, n_b)  # fmt: skip
    state.looks += 1
    variance = _variance(n_a, state.s_a, n_b, state.s_b)
    width = half_width(variance, alpha, tau)
    state.low = max(state.low, difference - width)
    state.high = min(state.high, difference + width)
    if state.low > 0:
        decision = "b_better"
    elif state.high < 0:
        decision = "a_better"
    else:
        decision = "no_difference_yet"
    needed = 0
    if decision == "no_difference_yet":
        needed = _samples_needed(state, max(abs(difference), min_effect), alpha, tau)
    return Verdict(difference, state.low, state.high, decision, needed, state.looks, n_a, n_b)


def _samples_needed(state: ABState, effect: float, alpha: float, tau: float) -> int:
    """Rows per arm (beyond those seen) at which the interval would be narrower than
    ``effect``, at the current accuracies: where a difference that large would be declared."""
    n = min(state.n_a, state.n_b)
    p_a = (state.s_a + 1) / (state.n_a + 2)
    p_b = (state.s_b + 1) / (state.n_b + 2)
    spread = p_a * (1 - p_a) + p_b * (1 - p_b)
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
