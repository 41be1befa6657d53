"""Detection quality of the drift monitor on scikit-learn's breast-cancer data.

False alarms: windows drawn from the reference data itself (no drift), over many seeds; the
share of windows declared drifted should stay within alpha. Detection delay: a stream whose
drift starts at a known record; the delay is the records from that onset to the end of the
first window declared drifted. Drifts: mean shift of one feature by 0.5 and 1 sigma, scale
change (x1.5 around the mean), category mix change (a categorical feature derived from "mean
texture" quartiles, its rarest band made four times as common), gradual drift (a mean shift
growing from 0 to 1 sigma over 2,000 records).

Window sizes: the 1 sigma mean shift and the category mix in windows of 1,000, 10,000 and
50,000 rows, and calm windows of those sizes; the share of windows each detector flags (the
test significant after the correction, PSI, Jensen-Shannon and Wasserstein each over its
threshold) and the smallest log10 p-value seen.

Types from the model: a tabular model with numeric, integer-coded categorical, boolean, text
and 0/1 features whose training CSV holds an id, a timestamp and the target too, written as
pandas writes it ("1.0" for a coded category, "True" for a boolean); the profile is built by
``python -m monitors profile build`` from that CSV and the model's metadata, then calm live
traffic as the gateway logs it (integers, JSON booleans, text) is judged window by window: the
windows declared drifted, which should be none.

``python -m loadtests.drift_quality [--seeds 200]`` prints the table (markdown).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer

from monitors.__main__ import main as monitors_cli
from monitors.evaluate import DetectorConfig, WindowResult, evaluate
from monitors.profile import ModelProfile, build_profile, load_profile
from monitors.windows import Windows, WindowSpec
from registry_client import FeatureSpec, ModelMetadata

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


def one_window(prof: ModelProfile, rows: np.ndarray, bands: np.ndarray) -> WindowResult:
    """A window of these rows (one request of them all), judged."""
    record = {
        "rows": len(rows),
        "time": 0.0,
        "features": {
            **{name: rows[:, j].tolist() for j, name in enumerate(NAMES)},
            CATEGORY: [f"band{b}" for b in bands],
        },
    }
    spec = WindowSpec("count", len(rows), len(rows))
    ((_, summary),) = Windows(spec, prof).add([record], [0])
    return evaluate(summary, prof, DetectorConfig(), model="m", version="1", window_id="w",
                    start_time=0, end_time=0)  # fmt: skip


def by_window_size(prof: ModelProfile, seeds: int) -> list[str]:
    """Table rows: per window size and drift, the share of windows each detector flags."""
    lines = []
    cases: dict[str, tuple[Drift | None, str]] = {
        "no drift": (None, NAMES[0]),
        "mean shift 1 sigma (mean radius)": (shift(1.0), NAMES[0]),
        "mean shift 5 sigma (mean radius)": (shift(5.0), NAMES[0]),
        "category mix (texture band)": (category_mix, CATEGORY),
    }
    for size in (1_000, 10_000, 50_000):
        for name, (drift, feature) in cases.items():
            flags = dict.fromkeys(("test", "psi", "js", "wasserstein"), 0)
            drifted = 0
            lowest = 0.0
            for seed in range(seeds):
                rng = np.random.default_rng(20_000 + seed)
                rows, bands = draw(rng, size)
                if drift is not None:
                    rows, bands = drift(rng, rows, bands)
                result = one_window(prof, rows, bands)
                drifted += result.status == "drift"
                reading = next(f for f in result.features if f.name == feature)
                lowest = min(lowest, reading.log10_p)
                for detector in flags:
                    flags[detector] += reading.flags.get(detector, False)
            shares = ", ".join(
                f"{d} {n / seeds:.0%}" for d, n in flags.items() if d in reading.flags
            )
            lines.append(
                f"| {size:,} rows, {name} ({seeds} seeds): windows drifted; flagged on {feature} "
                f"by | {drifted / seeds:.0%}; {shares}; lowest log10 p {round(lowest)} |"
            )
    return lines


MIXED = ModelMetadata(
    features=[
        FeatureSpec(name="age", dtype="int"),
        FeatureSpec(name="income", dtype="float"),
        FeatureSpec(name="clicks", dtype="int"),  # 0 to 3
        FeatureSpec(name="promo", dtype="int"),  # a 0/1 flag, numeric
        FeatureSpec(name="plan", dtype="int", categorical=True),  # coded 1, 2, 3
        FeatureSpec(name="member", dtype="bool"),
        FeatureSpec(name="colour", dtype="string", categorical=True),
    ]
)


def mixed(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The tabular model's features and its predicted label."""
    income = rng.lognormal(10, 0.5, n)
    member = rng.random(n) < 0.3
    return {
        "age": rng.integers(18, 80, n),
        "income": income,
        "clicks": rng.choice(4, n, p=[0.5, 0.3, 0.15, 0.05]),
        "promo": (rng.random(n) < 0.2).astype(int),
        "plan": rng.choice([1, 2, 3], n, p=[0.6, 0.3, 0.1]),
        "member": member,
        "colour": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
        "prediction:label": ((income > 25_000) | member).astype(int),
    }


def write_training_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """As pandas writes it, with an id, a timestamp and the target besides the features."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", *columns, "timestamp", "target"])
        lists = {k: v.tolist() for k, v in columns.items()}
        for i in range(len(columns["age"])):
            row = [lists[k][i] for k in columns]
            row[list(columns).index("plan")] = f"{float(lists['plan'][i]):.1f}"
            writer.writerow([i, *row, f"2026-01-01T00:00:{i % 60:02d}", i % 2])


def mixed_records(columns: dict[str, np.ndarray], per_record: int = 100) -> list[dict[str, Any]]:
    """Records as the gateway logs a model with an input per feature: integers, JSON booleans,
    text; ``per_record`` rows to a request."""
    lists = {k: v.tolist() for k, v in columns.items()}
    out = []
    for start in range(0, len(columns["age"]), per_record):
        part = slice(start, start + per_record)
        out.append({
            "rows": len(lists["age"][part]), "time": float(start),
            "features": {f.name: lists[f.name][part] for f in MIXED.features},
            "outputs": {"label": lists["prediction:label"][part]},
        })  # fmt: skip
    return out


def mixed_false_alarms(windows: int, size: int = 1_000) -> str:
    """A table row: calm windows of the tabular model declared drifted."""
    with tempfile.TemporaryDirectory() as tmp:
        version = Path(tmp) / "registry" / "tabular" / "1"
        version.mkdir(parents=True)
        MIXED.dump(version)
        write_training_csv(Path(tmp) / "train.csv", mixed(np.random.default_rng(0), 20_000))
        registry, data = str(Path(tmp) / "registry"), str(Path(tmp) / "train.csv")
        command = ["profile", "build", "--registry", registry, "--model", "tabular",
                   "--version", "1", "--csv", data]  # fmt: skip
        assert monitors_cli(command) == 0
        prof = load_profile(version)
    assert prof is not None
    stream = Windows(WindowSpec("count", size, size), prof)
    live = mixed_records(mixed(np.random.default_rng(1), windows * size))
    drifted = significant = 0
    judged = 0
    for _, summary in stream.add(live, [0] * len(live)):
        result = evaluate(summary, prof, DetectorConfig(), model="tabular", version="1",
                          window_id="w", start_time=0, end_time=0)  # fmt: skip
        judged += 1
        drifted += result.status == "drift"
        significant += sum(f.flags["test"] for f in result.features)
    return (
        f"| typed tabular model (numeric, 0/1, integer-coded categorical, boolean, text; "
        f"profiled from a CSV with id, timestamp and target columns): calm windows of "
        f"{size:,} rows declared drifted | {drifted} of {judged} ({significant} feature tests "
        f"significant of {judged * len(prof.features)}) |"
    )


def registered(root: Path, model: str, prof: ModelProfile) -> None:
    """A version of a 30-feature model with this profile in a local registry. The registry
    keeps only versions that have a model file; the monitor reads the profile and the
    metadata, never the model, so a placeholder stands for it."""
    version = root / model / "1"
    version.mkdir(parents=True)
    ModelMetadata(features=[FeatureSpec(name=name) for name in NAMES]).dump(version)
    (version / "model.onnx").write_bytes(b"placeholder: the monitor never loads the model")
    prof.dump(version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--delay-seeds", type=int, default=100)
    parser.add_argument("--size-seeds", type=int, default=20)
    parser.add_argument("--calm-windows", type=int, default=200)
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

    for line in by_window_size(prof, args.size_seeds):
        print(line)
    print(mixed_false_alarms(args.calm_windows))


if __name__ == "__main__":
    main()
