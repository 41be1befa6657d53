"""Detection quality of the drift monitor on scikit-learn's breast-cancer data.

False alarms: windows drawn from the reference data itself (no drift), over many seeds; the
share of windows declared drifted should stay within alpha. Detection delay: a stream whose
drift starts at a known record; the delay is the records from that onset to the end of the
first window declared drifted. Drifts: mean shift of one feature by 0.5 and 1 sigma, scale
change (x1.5 around the mean), category mix change (a categorical feature derived from "mean
texture" quartiles, its rarest band made four times as common), gradual drift (a mean shift
growing from 0 to 1 sigma over 2,000 records).

``python -m loadtests.drift_quality [--seeds 200]`` prints the table (markdown).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import numpy as np
from sklearn.datasets import load_breast_cancer

from monitors.evaluate import DetectorConfig, evaluate
from monitors.profile import ModelProfile, build_profile
from monitors.windows import Windows, WindowSpec

DATA = load_breast_cancer()
NAMES = [str(n) for n in DATA.feature_names]
X = DATA.data.astype(np.float64)
BANDS = np.digitize(X[:, 1], np.quantile(X[:, 1], [0.25, 0.5, 0.75])).astype(int)
CATEGORY = "texture band"
WINDOW = 250
SLIDE = 50


def profile() -> ModelProfile:
    columns = {name: X[:, j] for j, name in enumerate(NAMES)}
    columns[CATEGORY] = np.asarray([f"band{b}" for b in BANDS], dtype=object)
    return build_profile(columns, categorical={CATEGORY})


def to_records(rows: np.ndarray, bands: np.ndarray) -> list[dict[str, object]]:
    columns = rows.T.tolist()
    return [
        {
            "rows": 1,
            "time": float(i),
            "features": {
                **{name: [columns[j][i]] for j, name in enumerate(NAMES)},
                CATEGORY: [f"band{bands[i]}"],
            },
        }
        for i in range(len(rows))
    ]


def draw(
    rng: np.random.Generator, n: int, band_weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    if band_weights is None:
        index = rng.integers(0, len(X), n)
    else:
        weights = band_weights[BANDS]
        index = rng.choice(len(X), size=n, p=weights / weights.sum())
    return X[index].copy(), BANDS[index].copy()


def windows_flagged(
    prof: ModelProfile,
    rows: np.ndarray,
    bands: np.ndarray,
    config: DetectorConfig,
    spec: WindowSpec,
) -> list[tuple[int, bool]]:
    """(offset of each closed window's last record, drifted?) for a stream of rows."""
    windows = Windows(spec, prof)
    out = []
    for panes, summary in windows.add(to_records(rows, bands), list(range(len(rows)))):
        result = evaluate(
            summary, prof, config, model="m", version="1", window_id="w", start_time=0, end_time=0
        )
        out.append((panes[-1].last_offset, result.status == "drift"))
    return out


def false_alarm_rate(prof: ModelProfile, config: DetectorConfig, seeds: int) -> float:
    flagged = total = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        rows, bands = draw(rng, WINDOW * 4)
        results = windows_flagged(prof, rows, bands, config, WindowSpec("count", WINDOW, WINDOW))
        flagged += sum(f for _, f in results)
        total += len(results)
    return flagged / total


Drift = Callable[[np.random.Generator, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def shift(sigmas: float, feature: int = 0) -> Drift:
    def apply(
        rng: np.random.Generator, rows: np.ndarray, bands: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        rows[:, feature] += sigmas * X[:, feature].std()
        return rows, bands

    return apply


def scale(factor: float, feature: int = 0) -> Drift:
    def apply(
        rng: np.random.Generator, rows: np.ndarray, bands: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        mean = X[:, feature].mean()
        rows[:, feature] = mean + (rows[:, feature] - mean) * factor
        return rows, bands

    return apply


def category_mix(
    rng: np.random.Generator, rows: np.ndarray, bands: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return draw(rng, len(rows), band_weights=np.array([4.0, 1.0, 1.0, 1.0]))


def gradual(
    rng: np.random.Generator, rows: np.ndarray, bands: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    ramp = np.minimum(np.arange(len(rows)) / 2000, 1.0)
    rows[:, 0] += ramp * X[:, 0].std()
    return rows, bands


def delays(
    prof: ModelProfile,
    config: DetectorConfig,
    drift: Drift,
    seeds: int,
    onset: int = 1000,
    after: int = 3000,
) -> list[float]:
    out = []
    for seed in range(seeds):
        rng = np.random.default_rng(10_000 + seed)
        before_rows, before_bands = draw(rng, onset)
        after_rows, after_bands = drift(rng, *draw(rng, after))
        rows = np.vstack([before_rows, after_rows])
        bands = np.concatenate([before_bands, after_bands])
        results = windows_flagged(prof, rows, bands, config, WindowSpec("count", WINDOW, SLIDE))
        hit = next((end for end, f in results if f and end >= onset), None)
        out.append(float(hit - onset + 1) if hit is not None else float("inf"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--delay-seeds", type=int, default=100)
    args = parser.parse_args()
    prof = profile()
    config = DetectorConfig(alpha=0.05, min_rows=200)
    far = false_alarm_rate(prof, config, args.seeds)
    print(f"windows of {WINDOW} rows (sliding by {SLIDE} for delays), alpha 0.05, BH, PSI effect\n")
    print("| scenario | result |\n| --- | --- |")
    print(f"| no drift: windows declared drifted ({args.seeds} seeds x 4 windows) | {far:.2%} |")
    scenarios = {
        "mean shift 0.5 sigma (mean radius)": shift(0.5),
        "mean shift 1 sigma (mean radius)": shift(1.0),
        "scale x1.5 (mean radius)": scale(1.5),
        "category mix (texture band)": category_mix,
        "gradual 0 to 1 sigma over 2,000 records": gradual,
    }
    for name, drift in scenarios.items():
        found = delays(prof, config, drift, args.delay_seeds)
        finite = [d for d in found if d != float("inf")]
        missed = len(found) - len(finite)
        median = statistics.median(found)
        p90 = float(np.percentile(found, 90))
        print(
            f"| {name}: records to detection, median / p90 ({args.delay_seeds} seeds) | "
            f"{median:.0f} / {p90:.0f}" + (f", {missed} missed" if missed else "") + " |"
        )


if __name__ == "__main__":
    main()
