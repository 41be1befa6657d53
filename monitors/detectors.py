"""Two-sample drift statistics computed on binned summaries: a reference profile's counts
against a window's counts on the same bins, so a window never has to keep its raw values.

Numeric features are binned on the reference's edges (the outer bins are open-ended: values
below the first edge count in the first bin, above the last in the last). Categorical features
are counted per category, with one extra "other" bucket for categories the reference never saw.

Error of the binned Kolmogorov-Smirnov statistic: within one bin both empirical CDFs rise
monotonically, so the exact two-sample statistic on the raw values lies between the binned one
``D_b`` and ``D_b + m``, where ``m`` is the largest probability mass one bin holds in either
sample (``ks_binned(...).error_bound``). Ten quantile bins give ``m`` of about 0.1; the p-value
is computed from ``D_b``, so it errs towards "no drift".

P-values far in the tail underflow: at a few thousand rows a large shift has a p-value below
the smallest float, and 0.0 is what it is. Each test also gives ``log10_p``, its base-10
logarithm, which stays finite: computed from the distribution's tail where the p-value is a
float (at least 1e-300), else from an expression of the tail (KS: twice the one-sided
Birnbaum-Tingey sum, the continuation of scipy's ``kstwo``; chi-square: the leading terms of
the gamma function's upper tail). Where one sample lies wholly beyond the other (KS D = 1) the
asymptotic distribution says 0; the p-value is then the exact chance of that,
``2 / C(n + m, n)``, as scipy's exact test gives it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

__all__ = [
    "TestResult",
    "benjamini_hochberg",
    "bin_counts",
    "bonferroni",
    "chi_square",
    "jensen_shannon",
    "js_noise_level",
    "ks_binned",
    "psi",
    "psi_noise_level",
    "rejection_threshold",
    "wasserstein_binned",
    "wasserstein_noise_level",
]

_EPS = 1e-4  # floor for empty bins in PSI, as is customary


@dataclass(frozen=True, slots=True)
class TestResult:
    """A test's statistic, its p-value and log10 p-value (None for distances) and the bound on
    its binning error."""

    statistic: float
    p_value: float | None = None
    error_bound: float = 0.0
    log10_p: float | None = None


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin of ``edges`` (open-ended outer bins); NaNs are not counted."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    index = np.searchsorted(edges[1:-1], values, side="right")
    return np.bincount(index, minlength=len(edges) - 1).astype(np.int64)


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def ks_binned(reference: np.ndarray, window: np.ndarray) -> TestResult:
    """Two-sample Kolmogorov-Smirnov on counts over the same bins (asymptotic p-value)."""
    n, m = int(reference.sum()), int(window.sum())
    if n == 0 or m == 0:
        return TestResult(0.0, 1.0, 1.0, 0.0)
    p, q = _shares(reference), _shares(window)
    below_n, below_m = np.cumsum(reference), np.cumsum(window)
    if ((below_n == n) & (below_m == 0)).any() or ((below_m == m) & (below_n == 0)).any():
        # D = 1, one sample wholly beyond the other: the asymptotic distribution says 0 (NaN
        # for n = m = 1); the exact chance of that under no drift is 2 / C(n + m, n)
        log_p = min(0.0, math.log(2) - _log_binomial(n + m, n))
        return TestResult(1.0, math.exp(log_p), float(max(p.max(), q.max())), log_p / math.log(10))
    d = float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))
    effective = max(1, round(n * m / (n + m)))
    p_value = float(np.clip(stats.kstwo.sf(d, effective), 0.0, 1.0))
    log10_p = math.log10(p_value) if p_value >= 1e-300 else _ks_log10_tail(d, effective)
    return TestResult(d, p_value, float(max(p.max(), q.max())), log10_p)


# The exact tail's cost grows with the effective sample (about 13 ms for 100,000 terms here), and
# it runs per drifted feature per window on the monitor's event loop: past this, the bound.
_MAX_TAIL_TERMS = 100_000


def _ks_log10_tail(d: float, n: int) -> float:
    """log10 P(D_n >= d) where it is below the float range: twice the one-sided tail, by the
    Birnbaum-Tingey formula P(D+ >= d) = d sum_j C(n, j) (1 - d - j/n)^(n-j) (d + j/n)^(j-1),
    j = 0 .. n (1 - d), summed in logs: exact for d >= 1/2, where the two sides cannot both
    reach d, and otherwise above the exact value by the chance that both do, negligible this
    far out. Past ``_MAX_TAIL_TERMS`` terms, the Dvoretzky-Kiefer-Wolfowitz-Massart bound
    2 exp(-2 n d^2)."""
    count = math.floor(n * (1 - d)) + 1
    if count > _MAX_TAIL_TERMS:
        return min(0.0, (math.log(2) - 2 * n * d * d) / math.log(10))
    j = np.arange(count, dtype=np.float64)
    rest = 1 - d - j / n
    j, rest = j[rest > 0], rest[rest > 0]
    terms = (
        special.gammaln(n + 1)
        - special.gammaln(j + 1)
        - special.gammaln(n - j + 1)
        + (n - j) * np.log(rest)
        + (j - 1) * np.log(d + j / n)
    )
    log_p = math.log(2 * d) + float(special.logsumexp(terms))
    return min(0.0, log_p / math.log(10))


def _log_binomial(total: int, chosen: int) -> float:
    """The natural log of C(total, chosen)."""
    return float(
        special.gammaln(total + 1)
        - special.gammaln(chosen + 1)
        - special.gammaln(total - chosen + 1)
    )


def chi_square(reference: np.ndarray, window: np.ndarray) -> TestResult:
    """Chi-square test of homogeneity of two category-count vectors (same categories, same
    order; a category seen in only one of them is fine). The statistic is Cramer's V."""
    table = np.vstack([reference, window]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return TestResult(0.0, 1.0, log10_p=0.0)
    chi2, p_value, dof, _ = stats.chi2_contingency(table, correction=False)
    cramers_v = float(np.sqrt(chi2 / table.sum()))  # min(rows, cols) - 1 == 1 for two rows
    log10_p = _chi2_log10_sf(float(chi2), int(dof), float(p_value))
    return TestResult(cramers_v, float(p_value), log10_p=log10_p)


def _chi2_log10_sf(chi2: float, dof: int, p_value: float) -> float:
    """log10 of the chi-square upper tail ``p_value``, finite where it underflows: the gamma
    upper tail Q(a, x) ~ x^(a-1) e^-x / Gamma(a) (1 + (a-1)/x + (a-1)(a-2)/x^2), a = dof/2,
    x = chi2/2 (x far above a there)."""
    if p_value > 1e-300:
        return math.log10(p_value)
    a, x = dof / 2, chi2 / 2
    series = 1 + (a - 1) / x + (a - 1) * (a - 2) / x**2
    log_q = (a - 1) * math.log(x) - x - float(special.gammaln(a)) + math.log(series)
    return min(0.0, log_q / math.log(10))


def psi(reference: np.ndarray, window: np.ndarray) -> TestResult:
    """Population Stability Index over the same bins (empty bins floored at 1e-4); 0 where
    either side has no values (the floor alone would make up a figure: 6.9 for ten bins)."""
    if not reference.sum() or not window.sum():
        return TestResult(0.0)
    p = np.clip(_shares(reference), _EPS, None)
    q = np.clip(_shares(window), _EPS, None)
    return TestResult(float(np.sum((q - p) * np.log(q / p))))


_DENSE_ROWS = 30.0  # a bin the window expects this many rows in: PSI's asymptotic term holds


def psi_noise_level(reference: np.ndarray, n_window: int) -> float:
    """PSI's expected value when nothing drifted, for a window of ``n_window`` rows against
    these reference counts. A fixed threshold such as 0.1 fires on noise alone in small
    windows; add this to it.

    Where the window expects many rows in every bin it is about (bins - 1) (1/n + 1/m): each
    used bin adds (1 - p) / m for the window's sampling, and (bins - 1) / n is the reference's.
    A bin the window expects few rows in (a rare category, a small window) is often empty and
    floored at 1e-4, where the asymptotic term is far off (0.25 against PSI's 0.39 for 50
    categories and 200 rows): for those bins the expectation is summed over the binomial
    distribution of the window's count, floor included."""
    n = int(reference.sum())
    if n == 0 or n_window == 0:
        return 0.0  # PSI is 0 then
    shares = reference[reference > 0] / n
    m = n_window
    noise = float(np.sum(1 - shares)) / m + (len(shares) - 1) / n
    sparse = shares[m * shares < _DENSE_ROWS]
    if len(sparse):
        most = m * float(sparse.max())  # the counts past ``top`` have no mass to speak of
        top = min(m, int(most + 10 * math.sqrt(most) + 10))
        k = np.arange(top + 1, dtype=np.float64)[:, None]
        log_pmf = (
            special.gammaln(m + 1)
            - special.gammaln(k + 1)
            - special.gammaln(m - k + 1)
            + special.xlogy(k, sparse)
            + special.xlog1py(m - k, -sparse)
        )
        q, p = np.maximum(k / m, _EPS), np.maximum(sparse, _EPS)
        expected = np.sum(np.exp(log_pmf) * (q - p) * np.log(q / p), axis=0)
        noise += float(np.sum(expected - (1 - sparse) / m))
    return noise


def js_noise_level(bins: int, n_reference: int, n_window: int) -> float:
    """The squared Jensen-Shannon distance (base 2) expected when nothing drifted: about an
    eighth of PSI's asymptotic (bins - 1) (1/n + 1/m), in bits, since both are chi-square-like
    sums for small differences."""
    if n_reference == 0 or n_window == 0:
        return 0.0  # the distance is 0 then
    return (bins - 1) * (1 / n_reference + 1 / n_window) / (8 * math.log(2))


def jensen_shannon(reference: np.ndarray, window: np.ndarray) -> TestResult:
    """Jensen-Shannon distance (base 2, between 0 and 1) of the two binned distributions; 0
    where either side has no values."""
    if not reference.sum() or not window.sum():
        return TestResult(0.0)
    p, q = _shares(reference), _shares(window)
    mid = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / mid[mask])))

    return TestResult(float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2))))


def wasserstein_binned(
    reference: np.ndarray,
    window: np.ndarray,
    edges: np.ndarray,
    scale: float,
    beyond: np.ndarray | None = None,
) -> TestResult:
    """Earth mover's distance between the binned distributions, each bin's mass at its centre,
    divided by ``scale`` (the reference's standard deviation). Moving every value to its bin's
    centre changes the distance by at most the widest bin's width (the error bound, scaled).

    The outer bins are open-ended: ``beyond`` is how far the window's values lie below the
    first edge and above the last, summed. The reference lies within the edges, so that
    distance is exact and is added (per window value): with it the bound holds whatever the
    window's range; without it a window beyond the reference's range reads far too low."""
    scale = scale if scale > 0 else 1.0
    bound = float(np.max(np.diff(edges))) / scale
    rows = int(window.sum())
    if not reference.sum() or not rows:  # either side without values: 0, as KS says
        return TestResult(0.0, None, bound)
    p, q = _shares(reference), _shares(window)
    centres = (edges[:-1] + edges[1:]) / 2
    gaps = np.diff(centres)
    distance = float(np.sum(np.abs(np.cumsum(p) - np.cumsum(q))[:-1] * gaps))
    if beyond is not None:
        distance += float(np.sum(beyond)) / rows
    return TestResult(distance / scale, None, bound)


def wasserstein_noise_level(
    reference: np.ndarray, edges: np.ndarray, scale: float, n_window: int
) -> float:
    """The binned Wasserstein distance (over ``scale``) expected when nothing drifted: at each
    inner edge the two empirical CDFs differ by about sqrt(2/pi) sqrt(F(1 - F)(1/n + 1/m))."""
    n = int(reference.sum())
    if n == 0 or n_window == 0:
        return 0.0  # the distance is 0 then
    cdf = np.cumsum(_shares(reference))[:-1]
    centres = (edges[:-1] + edges[1:]) / 2
    spread = np.sqrt(cdf * (1 - cdf) * (1 / n + 1 / n_window))
    scale = scale if scale > 0 else 1.0
    return float(np.sqrt(2 / np.pi) * np.sum(spread * np.diff(centres)) / scale)


def bonferroni(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Which hypotheses are rejected at family-wise level ``alpha``."""
    p_values = np.asarray(p_values, dtype=np.float64)
    return p_values <= alpha / max(len(p_values), 1)


def benjamini_hochberg(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Which hypotheses are rejected at false-discovery rate ``alpha`` (step-up procedure)."""
    p_values = np.asarray(p_values, dtype=np.float64)
    count = len(p_values)
    if count == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p_values)
    thresholds = alpha * np.arange(1, count + 1) / count
    passed = p_values[order] <= thresholds
    rejected = np.zeros(count, dtype=bool)
    if passed.any():
        last = int(np.nonzero(passed)[0].max())
        rejected[order[: last + 1]] = True
    return rejected


def rejection_threshold(rejected: np.ndarray, alpha: float, correction: str) -> float:
    """The p-value at or below which a hypothesis was rejected: alpha / m for Bonferroni;
    alpha R / m for Benjamini-Hochberg with R rejections (alpha / m when none)."""
    count = max(len(rejected), 1)
    if correction == "bonferroni":
        return alpha / count
    return alpha * max(int(np.sum(rejected)), 1) / count
