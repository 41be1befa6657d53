"""The binned drift statistics against scipy and direct computations on the raw samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats
from scipy.spatial.distance import jensenshannon
from sklearn.datasets import load_breast_cancer

from monitors.detectors import (
    _ks_log10_tail,
    benjamini_hochberg,
    bin_counts,
    bonferroni,
    chi_square,
    jensen_shannon,
    ks_binned,
    psi,
    psi_noise_level,
    rejection_threshold,
    wasserstein_binned,
)

DATA = load_breast_cancer().data


def quantile_edges(values: np.ndarray, bins: int = 10) -> np.ndarray:
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))


def samples(seed: int, shift: float = 0.0, size: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    column = DATA[:, seed % DATA.shape[1]]
    reference = rng.choice(column, size=2000)
    window = rng.choice(column, size=size) + shift * column.std()
    return reference, window


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0])
def test_ks_is_within_its_stated_bound_of_scipy(seed: int, shift: float) -> None:
    reference, window = samples(seed, shift)
    edges = quantile_edges(reference)
    binned = ks_binned(bin_counts(reference, edges), bin_counts(window, edges))
    exact = stats.ks_2samp(reference, window, method="asymp")
    assert binned.statistic <= exact.statistic + 1e-12
    assert exact.statistic <= binned.statistic + binned.error_bound + 1e-12
    # same D gives scipy's asymptotic p-value
    same = stats.kstwo.sf(binned.statistic, round(2000 * 400 / 2400))
    assert binned.p_value == pytest.approx(same, rel=1e-9, abs=1e-12)


def test_ks_p_value_matches_scipy_when_bins_hold_single_values() -> None:
    rng = np.random.default_rng(7)
    reference = rng.integers(0, 20, size=3000).astype(float)
    window = rng.integers(2, 22, size=800).astype(float)
    edges = np.arange(-0.5, 22.5, 1.0)  # one bin per integer value: binning loses nothing
    binned = ks_binned(bin_counts(reference, edges), bin_counts(window, edges))
    exact = stats.ks_2samp(reference, window, method="asymp")
    assert binned.statistic == pytest.approx(exact.statistic, abs=1e-12)
    assert binned.p_value == pytest.approx(exact.pvalue, rel=1e-6, abs=1e-300)


def test_chi_square_matches_scipy_and_tolerates_unseen_categories() -> None:
    reference = np.array([500, 300, 200, 0])  # last bucket: categories the reference never saw
    window = np.array([40, 35, 15, 10])
    result = chi_square(reference, window)
    chi2, p_value, _, _ = stats.chi2_contingency(np.vstack([reference, window]), correction=False)
    assert result.p_value == pytest.approx(p_value)
    assert result.statistic == pytest.approx(np.sqrt(chi2 / (reference.sum() + window.sum())))
    assert chi_square(np.array([5, 0]), np.array([3, 0])).p_value == 1.0  # one category only


@pytest.mark.parametrize("seed", range(10))
def test_psi_and_js_match_direct_computation_on_raw_samples(seed: int) -> None:
    reference, window = samples(seed, shift=0.5)
    edges = quantile_edges(reference)
    ref_counts, win_counts = bin_counts(reference, edges), bin_counts(window, edges)
    # direct: bin the raw samples with numpy's histogram (outer bins widened to hold everything)
    wide = edges.copy()
    wide[0], wide[-1] = min(reference.min(), window.min()), max(reference.max(), window.max())
    p = np.histogram(reference, wide)[0] / len(reference)
    q = np.histogram(window, wide)[0] / len(window)
    pc, qc = np.clip(p, 1e-4, None), np.clip(q, 1e-4, None)
    assert psi(ref_counts, win_counts).statistic == pytest.approx(
        np.sum((qc - pc) * np.log(qc / pc))
    )
    assert jensen_shannon(ref_counts, win_counts).statistic == pytest.approx(
        jensenshannon(p, q, base=2), abs=1e-9
    )


@pytest.mark.parametrize("seed", range(10))
def test_wasserstein_is_within_its_bound_of_scipy_on_raw_samples(seed: int) -> None:
    reference, window = samples(seed, shift=0.4)
    reference = reference[(reference > 0)]
    edges = np.linspace(min(reference.min(), window.min()), max(reference.max(), window.max()), 41)
    scale = reference.std()
    binned = wasserstein_binned(
        bin_counts(reference, edges), bin_counts(window, edges), edges, scale
    )
    exact = stats.wasserstein_distance(reference, window) / scale
    assert abs(binned.statistic - exact) <= binned.error_bound


def test_psi_noise_level_is_what_psi_averages_under_no_drift() -> None:
    rng = np.random.default_rng(3)
    edges = np.quantile(rng.normal(size=100_000), np.linspace(0, 1, 11))
    reference = bin_counts(rng.normal(size=5000), edges)
    values = [psi(reference, bin_counts(rng.normal(size=300), edges)).statistic for _ in range(400)]
    expected = psi_noise_level(reference, 300)
    assert np.mean(values) == pytest.approx(expected, rel=0.2)
    assert expected > 0.02  # a fixed 0.1 threshold sits only a few noise levels above it


def test_multiple_testing_corrections_match_scipy() -> None:
    rng = np.random.default_rng(11)
    p_values = np.concatenate([rng.uniform(size=25), rng.uniform(0, 0.002, size=5)])
    adjusted = stats.false_discovery_control(p_values, method="bh")
    assert (benjamini_hochberg(p_values, 0.05) == (adjusted <= 0.05)).all()
    assert (bonferroni(p_values, 0.05) == (p_values <= 0.05 / 30)).all()
    assert benjamini_hochberg(np.array([]), 0.05).size == 0


def test_ks_keeps_an_underflowed_p_value_at_0_with_a_finite_log10_bound() -> None:
    edges = np.linspace(-4, 4, 11)
    rng = np.random.default_rng(0)
    reference = bin_counts(rng.normal(size=20_000), edges)
    for size, shift in [(2_000, 1.5), (50_000, 5.0)]:
        window = bin_counts(rng.normal(size=size) + shift, edges)
        result = ks_binned(reference, window)
        assert result.p_value is not None
        assert result.p_value == 0.0 or result.p_value < 1e-300
        assert result.log10_p is not None
        assert -1e9 < result.log10_p < -300
        exact = stats.kstwo.logsf(result.statistic, round(20_000 * size / (20_000 + size)))
        if np.isfinite(exact):  # the tail below the float range follows scipy's
            assert result.log10_p == pytest.approx(exact / np.log(10), rel=1e-6)
    calm = ks_binned(reference, bin_counts(rng.normal(size=500), edges))
    assert calm.p_value is not None
    assert calm.log10_p == pytest.approx(np.log10(calm.p_value))


def test_chi_square_log10_p_follows_the_tail_beyond_the_float_range() -> None:
    reference = np.array([5000, 3000, 2000, 0])
    previous = 0.0
    for size in [100, 1_000, 10_000, 100_000]:
        window = np.array([0, size // 2, size - size // 2, 0])  # the commonest category gone
        result = chi_square(reference, window)
        assert result.log10_p is not None
        assert result.log10_p < previous
        previous = result.log10_p
        if result.p_value is not None and result.p_value > 1e-300:
            assert result.log10_p == pytest.approx(np.log10(result.p_value))
        else:
            assert result.p_value == 0.0
            table = np.vstack([reference, window])[:, :3]
            chi2 = stats.chi2_contingency(table, correction=False)[0]
            # three categories: two degrees of freedom, whose tail is exactly exp(-chi2 / 2)
            assert result.log10_p == pytest.approx(-chi2 / 2 / np.log(10), rel=1e-9)
    assert previous < -1000


def test_corrections_reject_p_values_of_0_and_say_where_they_cut() -> None:
    p_values = np.array([0.0, 0.0, 0.3, 0.011, 0.9])
    assert benjamini_hochberg(p_values, 0.05).tolist() == [True, True, False, True, False]
    assert bonferroni(p_values, 0.05).tolist() == [True, True, False, False, False]
    rejected = benjamini_hochberg(p_values, 0.05)
    assert rejection_threshold(rejected, 0.05, "bh") == pytest.approx(0.05 * 3 / 5)
    assert rejection_threshold(bonferroni(p_values, 0.05), 0.05, "bonferroni") == 0.01
    assert not benjamini_hochberg(np.array([np.nan, 0.5]), 0.05).any()


@pytest.mark.parametrize(("n", "m"), [(1, 1), (1, 2), (8, 5), (10, 10), (30, 7), (300, 200)])
def test_ks_of_samples_wholly_apart_has_scipys_exact_p_value(n: int, m: int) -> None:
    # every window value beyond every reference value (D = 1): the asymptotic distribution
    # gives 0 (NaN for one row each); scipy's exact test gives 2 / C(n + m, n)
    reference, window = np.arange(n, dtype=float), np.arange(m, dtype=float) + 1000
    exact = stats.ks_2samp(reference, window, method="exact")
    edges = np.array([-1.0, 500.0, 2000.0])
    for ref_counts, win_counts in [
        (bin_counts(reference, edges), bin_counts(window, edges)),
        (bin_counts(window, edges), bin_counts(reference, edges)),  # the other way round
    ]:
        result = ks_binned(ref_counts, win_counts)
        assert result.statistic == 1.0
        assert result.p_value == pytest.approx(exact.pvalue, rel=1e-9)
        assert result.log10_p == pytest.approx(np.log10(exact.pvalue), rel=1e-9)


def test_ks_of_large_samples_wholly_apart_is_0_with_the_exact_log10_p() -> None:
    result = ks_binned(np.array([20_000, 0, 0]), np.array([0, 0, 500]))
    assert result.p_value == 0.0
    exact = np.log10(2) - (
        special.gammaln(20_501) - special.gammaln(20_001) - special.gammaln(501)
    ) / np.log(10)
    assert result.log10_p is not None
    assert result.log10_p == pytest.approx(exact, rel=1e-12)
    assert result.log10_p < -308


ZIPF = 1 / np.arange(1, 51) ** 1.2 / np.sum(1 / np.arange(1, 51) ** 1.2)  # 50 categories


@pytest.mark.parametrize("rows", [1, 10, 200, 1_000, 5_000])
def test_psi_noise_level_is_psis_exact_expectation_over_the_windows_counts(rows: int) -> None:
    # the expectation over each bin's binomial count (scipy), floor included, plus (bins - 1)/n
    rng = np.random.default_rng(rows)
    reference = np.append(rng.multinomial(20_000, ZIPF), 0)  # an empty "other" bucket
    shares = reference[reference > 0] / 20_000
    k = np.arange(rows + 1)[:, None]
    q, p = np.clip(k / rows, 1e-4, None), np.clip(shares, 1e-4, None)
    weights = stats.binom.pmf(k, rows, shares)
    exact = np.sum(weights * (q - p) * np.log(q / p)) + (len(shares) - 1) / 20_000
    assert psi_noise_level(reference, rows) == pytest.approx(exact, rel=0.02)


def test_psi_noise_level_is_what_psi_averages_with_many_rare_categories() -> None:
    # the asymptotic (bins - 1)(1/n + 1/m) said 0.25 here, where PSI averages 0.39: its flag
    # fired in two calm windows out of three
    rng = np.random.default_rng(12)
    reference = np.append(rng.multinomial(20_000, ZIPF), 0)
    values = [
        psi(reference, np.append(rng.multinomial(200, ZIPF), 0)).statistic for _ in range(400)
    ]
    assert np.mean(values) == pytest.approx(psi_noise_level(reference, 200), rel=0.05)
    flagged = np.mean(np.asarray(values) > 0.1 + psi_noise_level(reference, 200))
    assert flagged < 0.2


@pytest.mark.parametrize(
    ("rows", "cuts"), [(400, range(1, 40)), (10_000, range(2_000, 4_600, 100))]
)
def test_ks_log10_p_goes_on_falling_below_the_float_range(rows: int, cuts: range) -> None:
    # Two samples of ``rows`` (effective size rows / 2), D = 1 - 2 cut / rows: scipy's tail
    # where it has one, then still falling. Before, past 1e-300 log10 p was the bound
    # 2 exp(-2 n D^2): -163 for D = 0.97 at 200, where the p-value beside it was 1e-301.
    previous = 0.0
    below = 0
    for cut in cuts:
        result = ks_binned(np.array([rows - cut, cut]), np.array([cut, rows - cut]))
        assert result.log10_p is not None
        assert result.statistic == pytest.approx(1 - 2 * cut / rows)
        exact = stats.kstwo.logsf(result.statistic, rows // 2) / np.log(10)
        if np.isfinite(exact):
            assert result.log10_p == pytest.approx(exact, rel=1e-6), cut
        else:
            below += 1
        assert result.log10_p > previous or previous == 0.0, cut  # D falls as the cut grows
        previous = result.log10_p
    assert below >= 3


def test_the_ks_tail_of_a_very_large_sample_is_the_bound_not_millions_of_terms() -> None:
    # The exact tail sums about n (1 - d) terms; with a reference and a window of a million
    # rows each that was 2,000,000 terms (290 ms) per drifted feature per window, on the
    # monitor's event loop. Past 100,000 terms it is the DKW-Massart bound, which lies above
    # the exact tail (so it never overstates the evidence) and still falls as d grows.
    n = 500_000
    bound = [(math.log(2) - 2 * n * d * d) / math.log(10) for d in (0.05, 0.1)]
    assert _ks_log10_tail(0.05, n) == pytest.approx(bound[0])
    assert _ks_log10_tail(0.1, n) == pytest.approx(bound[1])
    assert bound[1] < bound[0] < -300
    # below the cap, still the exact tail: below the bound
    assert _ks_log10_tail(0.3, 10_000) < (math.log(2) - 2 * 10_000 * 0.09) / math.log(10)
