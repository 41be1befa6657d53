"""Judge a closed window against the reference profile: per-feature tests, a correction for
testing many features, effect sizes that must also be large enough, always-on checks."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from monitors.detectors import (
    benjamini_hochberg,
    bonferroni,
    chi_square,
    jensen_shannon,
    ks_binned,
    psi,
    psi_noise_level,
    wasserstein_binned,
)
from monitors.profile import OTHER, ModelProfile
from monitors.windows import Summary

__all__ = ["DetectorConfig", "FeatureResult", "WindowResult", "evaluate"]


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds. A feature drifts when its test is significant after correction AND its PSI
    exceeds ``psi_threshold`` plus PSI's own noise level at this sample size."""

    alpha: float = 0.05
    correction: str = "bh"  # or "bonferroni"
    psi_threshold: float = 0.1
    min_rows: int = 200
    max_missing_increase: float = 0.05
    max_unseen_share: float = 0.05
    min_drifted_features: int = 1


@dataclass
class FeatureResult:
    name: str
    test: str
    statistic: float
    p_value: float
    psi: float
    psi_threshold: float
    js_distance: float
    wasserstein: float | None = None
    missing_rate: float = 0.0
    unseen_share: float = 0.0
    drifted: bool = False
    reasons: list[str] = field(default_factory=list)


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

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    def fingerprint(self) -> str:
        """A digest of the window's statistics: equal for windows of the same rows."""
        stats = [(f.name, f.statistic, f.p_value, f.psi) for f in self.features]
        return hashlib.sha256(repr((self.rows, stats)).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["drifted_features"] = self.drifted_features
        return doc


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
    for name, ref in profile.features.items():
        if ref.kind == "numeric" and name in summary.bins:
            window = summary.bins[name]
            reference = np.asarray(ref.counts)
            ks = ks_binned(reference, window)
            edges = np.asarray(ref.bin_edges)
            present = int(window.sum())
            missing = summary.missing.get(name, 0) / max(present + summary.missing.get(name, 0), 1)
            feature = FeatureResult(
                name, "ks", ks.statistic, float(ks.p_value or 1.0),
                psi(reference, window).statistic,
                config.psi_threshold
                + psi_noise_level(len(reference), ref.rows or int(reference.sum()), present),
                jensen_shannon(reference, window).statistic,
                wasserstein_binned(reference, window, edges, ref.std).statistic,
                missing_rate=missing,
            )  # fmt: skip
            if missing > ref.missing_rate + config.max_missing_increase:
                feature.reasons.append(f"missing rate {missing:.3f} vs {ref.missing_rate:.3f}")
        elif ref.kind == "categorical" and name in summary.categories:
            names = list(ref.categories)
            if OTHER not in names:
                names.append(OTHER)
            reference = np.asarray([ref.categories.get(n, 0) for n in names])
            window = np.asarray([summary.categories[name].get(n, 0) for n in names])
            chi = chi_square(reference, window)
            unseen = window[names.index(OTHER)] / max(int(window.sum()), 1)
            ref_unseen = reference[names.index(OTHER)] / max(int(reference.sum()), 1)
            feature = FeatureResult(
                name, "chi2", chi.statistic, float(chi.p_value or 1.0),
                psi(reference, window).statistic,
                config.psi_threshold
                + psi_noise_level(len(names), int(reference.sum()), int(window.sum())),
                jensen_shannon(reference, window).statistic,
                unseen_share=float(unseen),
            )  # fmt: skip
            if unseen > ref_unseen + config.max_unseen_share:
                feature.reasons.append(f"{unseen:.1%} of values are categories never seen")
        else:
            continue
        result.features.append(feature)
    p_values = np.asarray([f.p_value for f in result.features])
    correct = bonferroni if config.correction == "bonferroni" else benjamini_hochberg
    significant = correct(p_values, config.alpha)
    for feature, is_significant in zip(result.features, significant, strict=True):
        if is_significant and feature.psi > feature.psi_threshold:
            feature.reasons.insert(
                0,
                f"{feature.test} p={feature.p_value:.2g}, "
                f"PSI {feature.psi:.3f} > {feature.psi_threshold:.3f}",
            )
        feature.drifted = bool(feature.reasons)
    prediction_drift = any(f.drifted for f in result.features if f.name.startswith("prediction:"))
    if prediction_drift or len(result.drifted_features) >= config.min_drifted_features:
        result.status = "drift"
    return result
