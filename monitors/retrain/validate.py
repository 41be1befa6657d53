"""The validation gate: candidate and champion on the same held-out rows.

Both models score the newest labelled rows (which the candidate did not train on). The report
holds each one's metrics (the monitor's own metric code, with intervals), confusion matrices and
McNemar's exact test on the rows where exactly one of them is right. The candidate passes unless
its primary metric is below the champion's by more than the margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from scipy.stats import binomtest

from monitors.performance import classification_metrics
from monitors.retrain.dataset import Dataset
from registry_client import ModelMetadata

__all__ = ["Scores", "ValidationError", "mcnemar", "score", "validate"]


class ValidationError(RuntimeError):
    """A model could not be scored on the held-out rows."""


@dataclass(frozen=True)
class Scores:
    """A model's predicted class and class probabilities (None when it gives none) per row."""

    labels: np.ndarray
    probs: np.ndarray | None


def score(model: bytes | Path, metadata: ModelMetadata, x: np.ndarray) -> Scores:
    """Run an ONNX classifier on the rows: its label output and its probability output."""
    source = str(model) if isinstance(model, Path) else model
    try:
        session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()
        name = metadata.feature_input or inputs[0].name
        outputs = [o.name for o in session.get_outputs()]
        report = metadata.validation
        label_name = report.label_output if report and report.label_output in outputs else None
        label_name = label_name or ("label" if "label" in outputs else outputs[0])
        score_name = report.score_output if report and report.score_output in outputs else None
        score_name = score_name or ("probabilities" if "probabilities" in outputs else None)
        wanted = [label_name] + ([score_name] if score_name else [])
        results = session.run(wanted, {name: x.astype(np.float32)})
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ValidationError(f"scoring failed: {type(exc).__name__}: {exc}") from exc
    labels = np.asarray(results[0]).reshape(len(x), -1)
    if labels.shape[1] > 1:  # a label output that holds scores
        labels = labels.argmax(axis=1)
    probs = np.asarray(results[1], dtype=np.float64) if score_name else None
    return Scores(labels.reshape(-1).astype(np.int64), probs)


def mcnemar(y: np.ndarray, champion: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test: of the rows where exactly one model is right, is either right more
    often than chance?"""
    champion_only = int(np.sum((champion == y) & (candidate != y)))
    candidate_only = int(np.sum((candidate == y) & (champion != y)))
    discordant = champion_only + candidate_only
    p_value = binomtest(candidate_only, discordant, 0.5).pvalue if discordant else 1.0
    return {
        "test": "mcnemar_exact",
        "champion_only_correct": champion_only,
        "candidate_only_correct": candidate_only,
        "p_value": float(p_value),
    }


def _metrics(y: np.ndarray, scores: Scores, classes: int) -> dict[str, Any]:
    probs = scores.probs if scores.probs is not None and scores.probs.shape[1] == classes else None
    return classification_metrics(y, scores.labels, probs, classes)


def validate(
    holdout: Dataset,
    champion: Scores,
    candidate: Scores,
    *,
    primary_metric: str,
    margin: float,
    alpha: float,
) -> tuple[bool, dict[str, Any]]:
    """(passed, report): metrics side by side, confusion matrices, the significance test."""
    classes = max(len(holdout.class_labels), 2)
    y = holdout.y
    side = {
        "champion": _metrics(y, champion, classes),
        "candidate": _metrics(y, candidate, classes),
    }
    if primary_metric not in side["candidate"] or primary_metric not in side["champion"]:
        raise ValidationError(f"primary metric {primary_metric!r} cannot be computed here")
    champion_value = side["champion"][primary_metric]["value"]
    candidate_value = side["candidate"][primary_metric]["value"]
    difference = candidate_value - champion_value
    test = mcnemar(y, champion.labels, candidate.labels)
    passed = difference >= -margin
    significant = test["p_value"] < alpha
    if passed:
        verdict = (
            f"candidate {primary_metric} {candidate_value:.4f} vs champion {champion_value:.4f} "
            f"({difference:+.4f}, margin {margin:g})"
        )
    else:
        verdict = (
            f"candidate {primary_metric} {candidate_value:.4f} is below the champion's "
            f"{champion_value:.4f} by {-difference:.4f}, more than the margin {margin:g}"
        )
    verdict += f"; McNemar p={test['p_value']:.3g}" + (" (significant)" if significant else "")
    names = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc", "log_loss")
    report = {
        "passed": passed,
        "verdict": verdict,
        "primary_metric": primary_metric,
        "margin": margin,
        "difference": difference,
        "holdout_rows": len(y),
        "holdout_start_time": float(holdout.time.min()) if len(y) else None,
        "holdout_end_time": float(holdout.time.max()) if len(y) else None,
        "metrics": {who: {n: m[n]["value"] for n in names if n in m} for who, m in side.items()},
        "intervals": {who: {n: m[n] for n in names if n in m} for who, m in side.items()},
        "confusion": {who: m["confusion"] for who, m in side.items()},
        "significance": {**test, "alpha": alpha, "significant": significant},
    }
    return passed, report
