"""Judging windows: every detector flags an extreme shift at any window size, p-values that
underflow stay 0 (with a finite log10 p-value), never 1."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_breast_cancer

from monitors.evaluate import DetectorConfig, WindowResult, evaluate
from monitors.profile import build_profile
from monitors.windows import Windows, WindowSpec

RNG = np.random.default_rng(1)
REFERENCE_ROWS = 20_000
COLOURS = np.array(["red", "green", "blue", "grey"], dtype=object)
PROFILE = build_profile(
    {
        "x": RNG.normal(size=REFERENCE_ROWS),
        "y": RNG.exponential(size=REFERENCE_ROWS),
        "colour": RNG.choice(COLOURS, REFERENCE_ROWS, p=[0.5, 0.3, 0.15, 0.05]),
    },
    categorical={"colour"},
)


def window(
    rows: int, seed: int, *, shift_sigma: float = 0.0, replace: tuple[str, str] | None = None
) -> WindowResult:
    """A window of one request of ``rows`` rows, optionally drifted, judged."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows) + shift_sigma
    colour = rng.choice(COLOURS, rows, p=[0.5, 0.3, 0.15, 0.05])
    if replace is not None:
        colour[colour == replace[0]] = replace[1]
    record = {
        "time": 1.0,
        "rows": rows,
        "features": {
            "x": x.tolist(),
            "y": rng.exponential(size=rows).tolist(),
            "colour": colour.tolist(),
        },
    }
    ((_, summary),) = Windows(WindowSpec("count", rows, rows), PROFILE).add([record], [0])
    return evaluate(summary, PROFILE, DetectorConfig(), model="m", version="1", window_id="w",
                    start_time=0, end_time=1)  # fmt: skip


@pytest.mark.parametrize("rows", [200, 1_000, 5_000, 20_000, 100_000])
def test_an_extreme_shift_is_flagged_by_every_detector_at_every_window_size(rows: int) -> None:
    result = window(rows, rows, shift_sigma=5.0, replace=("red", "green"))
    assert result.status == "drift"
    by_name = {f.name: f for f in result.features}
    x, colour = by_name["x"], by_name["colour"]
    assert x.flags == {"test": True, "psi": True, "js": True, "wasserstein": True, "missing": False}
    assert colour.flags == {
        "test": True,
        "psi": True,
        "js": True,
        "missing": False,
        "unseen": False,
    }
    for feature in (x, colour):
        assert feature.drifted
        assert feature.p_value < 1e-30
        assert feature.p_value <= result.p_threshold
        assert feature.log10_p < -30
        assert np.isfinite(feature.log10_p)
    assert set(result.drifted_features) == {"x", "colour"}


def test_a_window_of_50000_rows_reports_underflowed_p_values_as_0_below_the_float_range() -> None:
    result = window(50_000, 7, shift_sigma=5.0, replace=("red", "green"))
    for name in ("x", "colour"):
        feature = next(f for f in result.features if f.name == name)
        assert feature.p_value == 0.0, "underflowed: kept as 0, not turned into 1"
        assert feature.log10_p < -308, "below the smallest float, and says by how much"
        assert feature.drifted
        assert any("below the float range" in r for r in feature.reasons)
    doc = result.to_dict()
    assert {f["name"]: f["p_value"] for f in doc["features"]}["x"] == 0.0


@pytest.mark.parametrize("rows", [200, 2_000, 20_000])
def test_calm_windows_flag_nothing(rows: int) -> None:
    flagged = 0
    for seed in range(10):
        result = window(rows, 100 + seed)
        flagged += result.status == "drift"
        for feature in result.features:
            assert not feature.flags["psi"], (rows, feature)
            assert not feature.flags["js"], (rows, feature)
            assert not feature.flags.get("wasserstein"), (rows, feature)
    assert flagged <= 1


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.2, 1.0, 3.0, 8.0])
@pytest.mark.parametrize("rows", [200, 5_000, 100_000])
def test_no_detector_reports_p_1_for_a_statistic_not_near_0(shift: float, rows: int) -> None:
    result = window(
        rows, int(shift * 10) + rows, shift_sigma=shift, replace=("blue", "grey") if shift else None
    )
    for feature in result.features:
        if feature.p_value == 1.0:
            assert feature.statistic < 0.01, feature
        assert feature.log10_p <= 0.0
        if feature.p_value > 1e-300:
            assert feature.log10_p == pytest.approx(np.log10(feature.p_value))


def test_a_result_names_every_threshold() -> None:
    result = window(1_000, 3, shift_sigma=1.0)
    x = next(f for f in result.features if f.name == "x")
    assert x.psi_threshold > 0.1
    assert x.js_threshold > 0.1
    assert x.wasserstein_threshold is not None
    assert x.wasserstein_threshold > 0.1
    assert 0 < result.p_threshold <= 0.05


@pytest.mark.parametrize("shift", [0.0, 1.0, 5.0, -5.0])
def test_wasserstein_is_within_its_bound_of_scipy_whatever_the_windows_range(shift: float) -> None:
    # The outer bins are open-ended: before, a window beyond the reference's range read as if
    # its values sat at the outer bins' centres (a 5-sigma shift of "mean radius" read 2.3).
    data = load_breast_cancer().data
    rng = np.random.default_rng(int(shift * 10) + 50)
    for column in (0, 1, 3, 7, 21):
        values = rng.permutation(data[:, column])
        reference, live = values[:300], values[300:] + shift * values.std()
        profile = build_profile({"f": reference})
        feature = profile.features["f"]
        spec = WindowSpec("count", len(live), len(live) // 2)  # two panes, a restart between
        windows = Windows(spec, profile)
        half = len(live) // 2
        windows.add([{"time": 1.0, "rows": half, "features": {"f": live[:half].tolist()}}], [0])
        windows = Windows.restore(spec, profile, json.loads(json.dumps(windows.to_state())))
        rest = {"time": 2.0, "rows": len(live) - half, "features": {"f": live[half:].tolist()}}
        (*_, (_, summary)) = windows.add([rest], [1])
        result = evaluate(summary, profile, DetectorConfig(), model="m", version="1",
                          window_id="w", start_time=0, end_time=1)  # fmt: skip
        exact = stats.wasserstein_distance(reference, live[: summary.rows]) / feature.std
        bound = float(np.max(np.diff(feature.bin_edges))) / feature.std
        assert result.features[0].wasserstein == pytest.approx(exact, abs=bound), column


def test_a_feature_without_values_in_a_window_reads_0_against_finite_thresholds() -> None:
    # Before, the floor of PSI's empty bins made up PSI 6.9 (8.5 for the category), the
    # distances compared an empty histogram, and the thresholds were infinite: null in the
    # history, on which the report's page failed.
    rng = np.random.default_rng(13)
    record = {"time": 1.0, "rows": 300,
              "features": {"x": [None] * 300, "y": rng.exponential(size=300).tolist(),
                           "colour": [None] * 300}}  # fmt: skip
    ((_, summary),) = Windows(WindowSpec("count", 300, 300), PROFILE).add([record], [0])
    config = DetectorConfig()
    result = evaluate(summary, PROFILE, config, model="m", version="1", window_id="w",
                      start_time=0, end_time=1)  # fmt: skip
    by_name = {f.name: f for f in result.features}
    for name in ("x", "colour"):
        feature = by_name[name]
        assert (feature.statistic, feature.p_value, feature.psi, feature.js_distance) == (
            0.0, 1.0, 0.0, 0.0,
        )  # fmt: skip
        assert feature.psi_threshold == config.psi_threshold
        assert feature.js_threshold == config.js_threshold
        assert feature.missing_rate == 1.0
        assert [k for k, v in feature.flags.items() if v] == ["missing"]
        assert feature.drifted
    assert by_name["x"].wasserstein == 0.0
    assert by_name["x"].wasserstein_threshold == config.wasserstein_threshold
    assert result.drifted_features == ["x", "colour"]
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # every number finite
    assert len(doc["features"]) == 3


def test_readings_and_decisions_match_scipy_on_breast_cancer_windows() -> None:
    # every p-value from scipy on the same counts, the correction from scipy's BH, and the
    # documented rule: significant and PSI over its threshold, or missing / unseen flagged
    data = load_breast_cancer().data
    rng = np.random.default_rng(15)
    names = [f"f{j}" for j in range(data.shape[1])]
    kinds = np.array(list("abcdefgh"), dtype=object)
    shares = [0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.05]
    columns = {name: data[:, j] for j, name in enumerate(names)}
    profile = build_profile({**columns, "kind": rng.choice(kinds, 569, p=shares)}, {"kind"})
    outcomes: set[tuple[bool, bool]] = set()
    for _ in range(8):
        rows = int(rng.integers(200, 600))
        live = data[rng.integers(0, len(data), rows)]
        for j in rng.choice(len(names), 3, replace=False):
            live[:, j] += rng.uniform(0, 0.8) * data[:, j].std()
        live[rng.random(live.shape) < 0.03] = np.nan
        kind = rng.choice(np.append(kinds, "new"), rows)
        features: dict[str, list[Any]] = {
            name: [None if np.isnan(v) else float(v) for v in live[:, j]]
            for j, name in enumerate(names)
        }
        features["kind"] = kind.tolist()
        record = {"time": 1.0, "rows": rows, "features": features}
        ((_, summary),) = Windows(WindowSpec("count", rows, rows), profile).add([record], [0])
        result = evaluate(summary, profile, DetectorConfig(), model="m", version="1",
                          window_id="w", start_time=0, end_time=1)  # fmt: skip
        p_values = []
        for feature in result.features:
            ref = profile.features[feature.name]
            if ref.kind == "numeric":
                values = live[:, names.index(feature.name)]
                present = values[~np.isnan(values)]
                edges = np.asarray(ref.bin_edges)
                # the binned KS is the KS of the bin indices
                ref_bins = np.repeat(np.arange(len(ref.counts)), ref.counts)
                live_bins = np.searchsorted(edges[1:-1], present, side="right")
                d = stats.ks_2samp(ref_bins, live_bins).statistic
                size = round(len(ref_bins) * len(live_bins) / (len(ref_bins) + len(live_bins)))
                assert feature.statistic == pytest.approx(d, abs=1e-12)
                assert feature.p_value == pytest.approx(stats.kstwo.sf(d, size), rel=1e-9)
                assert feature.missing_rate == pytest.approx(np.isnan(values).mean())
            else:
                labels = list(ref.categories)
                table = np.array([
                    [ref.categories[c] for c in labels] + [0],
                    [np.sum(kind == c) for c in labels] + [np.sum(kind == "new")],
                ])  # fmt: skip
                chi2, p_value, _, _ = stats.chi2_contingency(table, correction=False)
                assert feature.p_value == pytest.approx(p_value, rel=1e-9)
                assert feature.statistic == pytest.approx(np.sqrt(chi2 / table.sum()))
                assert feature.unseen_share == pytest.approx(np.mean(kind == "new"))
            p_values.append(feature.p_value)
        significant = stats.false_discovery_control(p_values, method="bh") <= 0.05
        for feature, expected in zip(result.features, significant, strict=True):
            assert feature.flags["test"] == expected, feature.name
            assert feature.drifted == bool(
                (expected and feature.psi > feature.psi_threshold)
                or feature.flags["missing"]
                or feature.flags.get("unseen", False)
            )
            outcomes.add((feature.flags["test"], feature.drifted))
        assert (result.status == "drift") == bool(result.drifted_features)
    assert {(True, True), (False, False), (True, False)} <= outcomes  # each case was judged
