"""Judge a closed window against the reference profile: per-feature tests, a correction for
testing many features, effect sizes that must also be large enough, always-on checks.

Every feature gets every detector's reading with its threshold and whether it was crossed
(``flags``): the test (KS or chi-square; p-value and log10 p-value, significant after the
correction), PSI, the Jensen-Shannon distance and, for numeric features, the Wasserstein
distance, each distance against a threshold plus its own noise level at the window's size; the
missing rate against the reference's; for categorical features, the share of categories never
seen (noise levels: ``monitors.detectors``). A feature drifts when its test is significant
and its PSI crosses its threshold, or when its missing rate or unseen share rose too far; the
Jensen-Shannon and Wasserstein flags are reported, not decided on.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitors.detectors import (
    benjamini_hochberg,
    bonferroni,
    chi_square,
    jensen_shannon,
    js_noise_level,
    ks_binned,
    psi,
    psi_noise_level,
    rejection_threshold,
    wasserstein_binned,
    wasserstein_noise_level,
)
from monitors.profile import OTHER, FeatureProfile, ModelProfile
from monitors.windows import Summary

__all__ = ["DetectorConfig", "FeatureResult", "WindowResult", "evaluate", "window_histogram"]

# The Jensen-Shannon and Wasserstein thresholds add three times the distance's noise level (its
# mean when nothing drifted; 99% of calm windows stay under about 2.5-3 times it, measured), so
# these flags, which decide nothing, do not fire on noise alone. PSI's adds its noise level
# once: its flag decides together with the significance test.
_NOISE_MARGIN = 3.0


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds. A feature drifts when its test is significant after correction AND its PSI
    exceeds ``psi_threshold`` plus PSI's own noise level at this sample size."""

    alpha: float = 0.05
    correction: str = "bh"  # or "bonferroni"
    psi_threshold: float = 0.1
    js_threshold: float = 0.1
    wasserstein_threshold: float = 0.1
    min_rows: int = 200
    max_missing_increase: float = 0.05
    max_unseen_share: float = 0.05
    min_drifted_features: int = 1


@dataclass
class FeatureResult:
    """One feature's readings in one window. ``p_value`` is 0.0 where it underflows;
    ``log10_p`` stays finite (see ``monitors.detectors``)."""

    name: str
    kind: str  # "numeric", "categorical"
    test: str  # "ks", "chi2"
    statistic: float
    p_value: float
    log10_p: float
    psi: float
    psi_threshold: float
    js_distance: float
    js_threshold: float
    wasserstein: float | None = None
    wasserstein_threshold: float | None = None
    rows: int = 0  # values present
    missing_rate: float = 0.0
    reference_missing_rate: float = 0.0
    unseen_share: float = 0.0
    flags: dict[str, bool] = field(default_factory=dict)
    drifted: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies, a fifth of the monitor's time per record
        return {**self.__dict__, "flags": dict(self.flags), "reasons": list(self.reasons)}


@dataclass
class WindowResult:
    model: str
    version: str
    window_id: str
    rows: int
    start_time: float
    end_time: float
    status: str  # "insufficient", "ok", "drift"
    features: list[FeatureResult] = field(default_factory=list)
    p_threshold: float = 0.0  # p-values at or below it were significant after the correction

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    def fingerprint(self) -> str:
        """A digest of the window's statistics: equal for windows of the same rows."""
        stats = [(f.name, f.statistic, f.p_value, f.psi) for f in self.features]
        return hashlib.sha256(repr((self.rows, stats)).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "features"}
        doc["features"] = [f.to_dict() for f in self.features]
        doc["drifted_features"] = self.drifted_features
        return doc


def window_histogram(summary: Summary, name: str, ref: FeatureProfile) -> list[int]:
    """A window's counts of one feature on the reference's bins, or per reference category
    (then ``OTHER``)."""
    if ref.kind == "numeric":
        counts = summary.bins.get(name)
        return [0] * len(ref.counts) if counts is None else [int(c) for c in counts]
    window = summary.categories.get(name, {})
    return [window.get(c, 0) for c in _category_names(ref)]


def _category_names(ref: FeatureProfile) -> list[str]:
    names = list(ref.categories)
    return names if OTHER in names else [*names, OTHER]


def _missing_rate(summary: Summary, name: str, present: int) -> float:
    missing = summary.missing.get(name, 0)
    return missing / max(present + missing, 1)


def _feature(
    name: str, ref: FeatureProfile, summary: Summary, config: DetectorConfig
) -> FeatureResult:
    window = np.asarray(window_histogram(summary, name, ref))
    present = int(window.sum())
    wasserstein: float | None = None
    wasserstein_threshold: float | None = None
    if ref.kind == "numeric":
        reference = np.asarray(ref.counts)
        n_reference = int(reference.sum())
        test = ks_binned(reference, window)
        edges = np.asarray(ref.bin_edges)
        beyond = summary.beyond.get(name)
        wasserstein = wasserstein_binned(reference, window, edges, ref.std, beyond).statistic
        wasserstein_threshold = config.wasserstein_threshold + _NOISE_MARGIN * (
            wasserstein_noise_level(reference, edges, ref.std, present)
        )
        unseen = 0.0
    else:
        names = _category_names(ref)
        reference = np.asarray([ref.categories.get(n, 0) for n in names])
        n_reference = int(reference.sum())
        test = chi_square(reference, window)
        unseen = float(window[names.index(OTHER)] / max(present, 1))
    bins = len(reference)
    psi_threshold = config.psi_threshold + psi_noise_level(reference, present)
    js_threshold = math.sqrt(
        config.js_threshold**2 + _NOISE_MARGIN * js_noise_level(bins, n_reference, present)
    )
    result = FeatureResult(
        name=name,
        kind=ref.kind,
        test="ks" if ref.kind == "numeric" else "chi2",
        statistic=test.statistic,
        p_value=1.0 if test.p_value is None else test.p_value,
        log10_p=0.0 if test.log10_p is None else test.log10_p,
        psi=psi(reference, window).statistic,
        psi_threshold=psi_threshold,
        js_distance=jensen_shannon(reference, window).statistic,
        js_threshold=js_threshold,
        wasserstein=wasserstein,
        wasserstein_threshold=wasserstein_threshold,
        rows=present,
        missing_rate=_missing_rate(summary, name, present),
        reference_missing_rate=ref.missing_rate,
        unseen_share=unseen,
    )
    result.flags = {
        "psi": result.psi > psi_threshold,
        "js": result.js_distance > js_threshold,
        "missing": result.missing_rate > ref.missing_rate + config.max_missing_increase,
    }
    if wasserstein is not None and wasserstein_threshold is not None:
        result.flags["wasserstein"] = wasserstein > wasserstein_threshold
    if ref.kind == "categorical":
        ref_unseen = float(reference[names.index(OTHER)]) / max(n_reference, 1)
        # a Python bool: numpy's is not JSON to the history's writer
        result.flags["unseen"] = bool(unseen > ref_unseen + config.max_unseen_share)
    return result


def evaluate(
    summary: Summary,
    profile: ModelProfile,
    config: DetectorConfig,
    *,
    model: str,
    version: str,
    window_id: str,
    start_time: float,
    end_time: float,
) -> WindowResult:
    """Test every profiled feature of a window; decide whether the window drifted."""
    result = WindowResult(model, version, window_id, summary.rows, start_time, end_time, "ok")
    if summary.rows < config.min_rows:
        result.status = "insufficient"
        return result
    result.features = [
        _feature(name, ref, summary, config) for name, ref in profile.features.items()
    ]
    p_values = np.asarray([f.p_value for f in result.features])
    correct = bonferroni if config.correction == "bonferroni" else benjamini_hochberg
    significant = correct(p_values, config.alpha)
    result.p_threshold = rejection_threshold(significant, config.alpha, config.correction)
    for feature, is_significant in zip(result.features, significant, strict=True):
        feature.flags["test"] = bool(is_significant)
        if is_significant and feature.flags["psi"]:
            feature.reasons.append(
                f"{feature.test} p={_p_text(feature)}, "
                f"PSI {feature.psi:.3f} > {feature.psi_threshold:.3f}"
            )
        if feature.flags["missing"]:
            feature.reasons.append(
                f"missing rate {feature.missing_rate:.3f} vs {feature.reference_missing_rate:.3f}"
            )
        if feature.flags.get("unseen"):
            feature.reasons.append(f"{feature.unseen_share:.1%} of values are unseen categories")
        feature.drifted = bool(feature.reasons)
    prediction_drift = any(f.drifted for f in result.features if f.name.startswith("prediction:"))
    if prediction_drift or len(result.drifted_features) >= config.min_drifted_features:
        result.status = "drift"
    return result


def _p_text(feature: FeatureResult) -> str:
    if feature.p_value > 0:
        return f"{feature.p_value:.2g}"
    return f"1e{feature.log10_p:.0f} (below the float range)"
