"""Quality and speed of the ground-truth side of the monitor (``make bench-performance``).

1. False winners: two variants of equal accuracy (0.90), a look after every window of 200
   labelled rows per variant, 50 looks; the share of seeds in which the mSPRT declares a winner
   (must stay at or below alpha); the same for equal regressors compared on MAE and RMSE
   (heavy-tailed errors, t with 5 degrees of freedom).
2. Samples to detect a 2-point difference (0.90 against 0.92): labelled rows per variant at the
   look that declares the better one, over seeds; and how often it is found within 200,000.
3. The label-free estimate under covariate shift: a logistic model on synthetic data whose
   labels follow the model's own form (so only the inputs move), calibrated on a held-out set;
   windows of 500 rows drawn from shifted input distributions; mean absolute error between the
   estimated and the realized accuracy, and how often the realized value lies in the interval
   (per seed: a model, its table and 200 windows; median and spread over seeds).
4. The join's throughput on one core: labels joined per second (``JoinStore.add_labels`` on a
   store holding the predictions), and feedback items per second through the consumer's whole
   path (decoding messages, joining, committing: ``GroundTruthService.consume``).

    python -m loadtests.performance_quality [--seeds 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from monitors.abtest import ABState, ab_groups, look
from monitors.estimate import estimate_classification
from monitors.feedback import FEEDBACK_SCHEMA, FeedbackRecord, encode_feedback
from monitors.ground_truth import GroundTruthService
from monitors.join import JoinCounts, JoinStore
from monitors.performance import calibration_table
from monitors.performance_metrics import PerformanceMetrics
from monitors.schema import InferenceRecord, decode_records, encode_records
from monitors.settings import MonitorSettings
from monitors.webhooks import Webhooks
from registry_client import ModelMetadata, ValidationReport

ALPHA, TAU, MIN_SAMPLES, MIN_EFFECT = 0.05, 0.03, 100, 0.02


def _looks(p_a: float, p_b: float, seed: int, per_look: int, max_looks: int) -> tuple[str, int]:
    """Run one experiment: (decision, labelled rows per variant when it was made)."""
    rng = np.random.default_rng(seed)
    state = ABState()
    for k in range(1, max_looks + 1):
        a = int(rng.binomial(per_look, p_a))
        b = int(rng.binomial(per_look, p_b))
        verdict = look(state, [[per_look, a, a]], [[per_look, b, b]], alpha=ALPHA, tau=TAU,
                       min_samples=MIN_SAMPLES, min_effect=MIN_EFFECT)  # fmt: skip
        if verdict.decision != "no_difference_yet":
            return verdict.decision, k * per_look
    return "no_difference_yet", max_looks * per_look


def false_winners(seeds: int) -> dict[str, float]:
    decided = sum(_looks(0.9, 0.9, s, 200, 50)[0] != "no_difference_yet" for s in range(seeds))
    return {"seeds": seeds, "false_winner_rate": decided / seeds, "alpha": ALPHA}


def false_winners_on_losses(seeds: int) -> dict[str, float]:
    """The same under equal regressors compared on MAE and on RMSE (per-row losses, whose
    variance the test estimates from the running sums): 300 labelled rows per look, 50 looks."""
    result: dict[str, float] = {"seeds": seeds, "alpha": ALPHA}
    for metric in ("mae", "rmse"):
        decided = 0
        for seed in range(seeds):
            rng = np.random.default_rng(20_000 + seed)
            state = ABState(metric)
            for _ in range(50):
                arms = []
                for _ in range(2):
                    truth = rng.normal(size=300)
                    groups = ab_groups(metric, truth, truth + rng.standard_t(5, size=300), None, 0)
                    assert groups is not None
                    arms.append(groups)
                verdict = look(state, arms[0], arms[1], alpha=ALPHA, tau=TAU,
                               min_samples=MIN_SAMPLES, min_effect=MIN_EFFECT)  # fmt: skip
                if verdict.decision != "no_difference_yet":
                    decided += 1
                    break
        result[f"{metric}_false_winner_rate"] = decided / seeds
    return result


def samples_for_two_points(seeds: int) -> dict[str, float]:
    runs = [_looks(0.90, 0.92, 10_000 + s, 500, 400) for s in range(seeds)]
    found = [n for decision, n in runs if decision == "b_better"]
    wrong = sum(decision == "a_better" for decision, _ in runs)
    return {
        "seeds": seeds,
        "found_share": len(found) / seeds,
        "wrong_direction": wrong,
        "median_per_variant": float(np.median(found)) if found else float("nan"),
        "p10_per_variant": float(np.percentile(found, 10)) if found else float("nan"),
        "p90_per_variant": float(np.percentile(found, 90)) if found else float("nan"),
    }


def estimate_under_shift(windows: int = 200, rows: int = 500, seed: int = 0) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    weights = np.array([1.5, -1.0, 0.5, 0.0, 0.0])

    def draw(n: int, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, len(weights))) + shift
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(x @ weights + 0.3)))).astype(int)
        return x, y

    x, y = draw(20_000, np.zeros(len(weights)))
    model = LogisticRegression().fit(x, y)
    x_val, y_val = draw(5_000, np.zeros(len(weights)))
    calibration = calibration_table(y_val, model.predict_proba(x_val))
    errors, covered = [], 0
    realized_range = []
    for _ in range(windows):
        # covariate shift: the inputs move (towards and across the boundary), P(y|x) does not
        shift = rng.normal(scale=1.0, size=len(weights))
        xw, yw = draw(rows, shift)
        probs = model.predict_proba(xw)
        realized = float((probs.argmax(axis=1) == yw).mean())
        estimate = estimate_classification(probs, calibration)["accuracy"]
        errors.append(abs(estimate["value"] - realized))
        covered += estimate["low"] <= realized <= estimate["high"]
        realized_range.append(realized)
    return {
        "windows": windows,
        "rows_per_window": rows,
        "mae": float(np.mean(errors)),
        "coverage": covered / windows,
        "realized_min": float(np.min(realized_range)),
        "realized_max": float(np.max(realized_range)),
    }


def estimates_under_shift(seeds: int, windows: int = 200) -> dict[str, float]:
    """The estimate's error and its interval's coverage over seeds (each: a model, its
    reliability table and ``windows`` shifted windows); median and spread across seeds, since
    one seed's table error is shared by all its windows."""
    runs = [estimate_under_shift(windows, seed=s) for s in range(seeds)]
    coverage = [r["coverage"] for r in runs]
    errors = [r["mae"] for r in runs]
    return {
        "seeds": seeds,
        "windows_per_seed": windows,
        "coverage_median": float(np.median(coverage)),
        "coverage_p10": float(np.percentile(coverage, 10)),
        "coverage_p90": float(np.percentile(coverage, 90)),
        "coverage_min": float(np.min(coverage)),
        "coverage_pooled": float(np.mean(coverage)),
        "mae_median": float(np.median(errors)),
        "realized_min": float(min(r["realized_min"] for r in runs)),
        "realized_max": float(max(r["realized_max"] for r in runs)),
    }


@dataclass
class _Message:
    offset: int
    value: bytes
    timestamp: int = 0


def join_throughput(predictions: int = 200_000, batch: int = 5_000) -> dict[str, float]:
    """Labels joined per second by the store, on a store already holding the predictions."""
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = JoinStore(Path(tmp) / "p0.sqlite")
        stream = store.stream("m", "1", "a", classes=2)
        probs = [np.asarray([1 - p, p], np.float32).tobytes() for p in rng.uniform(size=1000)]
        rows = [(f"r{i}", 0, stream.id, float(i), float(i % 2), probs[i % 1000])
                for i in range(predictions)]  # fmt: skip
        started = time.process_time()
        for start in range(0, predictions, batch):
            store.add_predictions(rows[start : start + batch])
        store.commit({}, JoinCounts())
        stored_s = time.process_time() - started
        labels = [(f"r{i}", 0, float(rng.integers(0, 2)), float(i)) for i in range(predictions)]
        order = rng.permutation(predictions)
        labels = [labels[i] for i in order]
        started = time.process_time()
        for start in range(0, predictions, batch):
            store.add_labels(labels[start : start + batch])
        store.commit({}, JoinCounts())
        joined_s = time.process_time() - started
        store.close()
    return {"labels_per_s": predictions / joined_s, "predictions_per_s": predictions / stored_s}


def _prediction_messages(items: int, features: int = 0) -> list[_Message]:
    """Messages of 100 one-row records, with ``features`` float features each (the demo model
    has 30)."""
    records: list[InferenceRecord] = []
    messages: list[_Message] = []
    values = np.random.default_rng(2).normal(size=(1000, max(features, 1))).round(4)
    for i in range(items):
        record: InferenceRecord = {
            "schema_version": 2, "request_id": f"r{i}", "time": 1000.0 + i * 0.001,
            "endpoint": "m", "model": "m", "version": "1", "variant": "a", "role": "primary",
            "rows": 1, "latency_s": 0.001, "status": "ok",
            "outputs": {"label": [i % 2], "probabilities": [[0.4, 0.6]]},
        }  # fmt: skip
        if features:
            record["features"] = {f"f{j}": [float(values[i % 1000, j])] for j in range(features)}
        records.append(record)
        if len(records) == 100:
            messages.append(_Message(len(messages), encode_records(records)))
            records = []
    return messages


def _service(tmp: str) -> GroundTruthService:
    root = Path(tmp) / "registry"
    _register(root)
    settings = MonitorSettings(
        registry_root=root,
        state_dir=Path(tmp) / "state",
        performance={
            "enabled": True,
            "window": {"size_s": 60, "settle_s": 60},
            "horizon_s": 10**9,
        },
    )
    return GroundTruthService(settings, PerformanceMetrics(CollectorRegistry()), Webhooks([]))


def _finish(service: GroundTruthService) -> None:
    for partition in list(service.stores):
        service.close(partition)
    asyncio.run(service.webhooks.aclose())


def consumer_throughput(items: int = 100_000) -> dict[str, float]:
    """Feedback items per second through ``GroundTruthService.consume`` (decode, join, judge,
    commit), the predictions already in the store."""
    with tempfile.TemporaryDirectory() as tmp:
        service = _service(tmp)
        messages = _prediction_messages(items)

        async def predictions() -> None:
            for start in range(0, len(messages), 50):
                await service.consume(0, messages[start : start + 50], [])

        asyncio.run(predictions())
        feedback: list[FeedbackRecord] = [
            {"schema": FEEDBACK_SCHEMA, "model": "m", "request_id": f"r{i}", "row": 0,
             "labels": {"label": (i // 3) % 2}, "time": 1000.0 + i * 0.001}
            for i in range(items)
        ]  # fmt: skip
        label_messages = [
            _Message(k, encode_feedback(feedback[s : s + 500]))
            for k, s in enumerate(range(0, items, 500))
        ]

        async def labels() -> float:
            started = time.process_time()
            for start in range(0, len(label_messages), 10):
                await service.consume(0, [], label_messages[start : start + 10])
            return time.process_time() - started

        elapsed = asyncio.run(labels())
        joined = service.status()["join"]["labels_joined"]
        _finish(service)
    assert joined == items, joined
    return {"items_per_s": items / elapsed}


def decode_share(items: int = 100_000, features: int = 30) -> dict[str, float]:
    """What decoding the inference log costs the ground-truth consumer, which decodes it a
    second time beside the drift consumer: prediction rows per second (records of ``features``
    features) through its whole prediction path (decode, metadata, store, commit) and through
    the decode alone."""
    messages = _prediction_messages(items, features)
    started = time.process_time()
    for message in messages:
        decode_records(message.value)  # what the drift side's decode of records costs
    full_s = time.process_time() - started
    started = time.process_time()
    for message in messages:
        decode_records(message.value, features=False)  # what the ground truth does
    decode_s = time.process_time() - started
    with tempfile.TemporaryDirectory() as tmp:
        service = _service(tmp)

        async def predictions() -> float:
            started = time.process_time()
            for start in range(0, len(messages), 50):
                await service.consume(0, messages[start : start + 50], [])
            return time.process_time() - started

        path_s = asyncio.run(predictions())
        _finish(service)
    return {
        "full_decode_rows_per_s": items / full_s,
        "decode_rows_per_s": items / decode_s,
        "path_rows_per_s": items / path_s,
        "decode_share": decode_s / path_s,
    }


def _register(root: Path) -> None:
    """A version folder whose model file is a placeholder: the consumer reads the metadata."""
    directory = root / "m" / "1"
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(b"placeholder")
    ModelMetadata(
        class_labels=["no", "yes"],
        validation=ValidationReport(
            task="classification", rows=100, metrics={"accuracy": 0.9},
            score_output="probabilities",
        ),
    ).dump(directory)  # fmt: skip


def _repeat(fn: Callable[[], dict[str, float]], key: str, repeats: int) -> str:
    return _spread([fn()[key] for _ in range(repeats)])


def _spread(values: list[float]) -> str:
    repeats = len(values)
    return (
        f"median {statistics.median(values):,.0f}/s "
        f"(min {min(values):,.0f}, max {max(values):,.0f}, {repeats} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("false winners (equal variants, 50 looks):", false_winners(args.seeds))
    print("false winners on MAE and RMSE (equal regressors):", false_winners_on_losses(args.seeds))
    print("2-point difference (0.90 vs 0.92):", samples_for_two_points(args.seeds))
    print("estimate vs realized accuracy under covariate shift:", estimates_under_shift(args.seeds))
    print("join, labels:", _repeat(join_throughput, "labels_per_s", args.repeats))
    print("join, predictions:", _repeat(join_throughput, "predictions_per_s", args.repeats))
    print("consumer, feedback items:", _repeat(consumer_throughput, "items_per_s", args.repeats))
    shares = [decode_share() for _ in range(args.repeats)]
    print(
        "consumer, prediction rows: path",
        _spread([s["path_rows_per_s"] for s in shares]),
        "; decode alone",
        _spread([s["decode_rows_per_s"] for s in shares]),
        f"; decode share median {statistics.median(s['decode_share'] for s in shares):.0%}",
    )


if __name__ == "__main__":
    main()
