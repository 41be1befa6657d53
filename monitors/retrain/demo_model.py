"""The demo model's pieces, shared by ``gateway/demo.py`` (which registers the first versions)
and the retraining worker (whose built-in trainer fits the next ones): the reference profile of
training data, the validation report, the ONNX conversion, and ``DemoTrainer``.

Needs the ``demo`` extra (scikit-learn, skl2onnx) to train.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from monitors.performance import calibration_table, classification_metrics
from monitors.profile import build_profile
from monitors.retrain.dataset import Dataset
from monitors.retrain.trainer import TrainedModel, TrainerError
from registry_client import ModelMetadata, ReferenceProfile, ValidationReport
from registry_client.metadata import NumericProfile

__all__ = ["DemoTrainer", "reference_profile", "to_onnx_bytes", "validation_report"]


def reference_profile(data: np.ndarray, names: list[str], bins: int = 10) -> ReferenceProfile:
    """Histogram of each column on its training quantiles, the baseline for drift checks (the
    monitor's own profile builder, kept in the metadata's simpler form)."""
    profile = build_profile({name: data[:, j] for j, name in enumerate(names)}, bins=bins)
    features = {
        name: NumericProfile(bin_edges=p.bin_edges, counts=p.counts, mean=p.mean, std=p.std)
        for name, p in profile.features.items()
    }
    return ReferenceProfile(rows=len(data), features=features)


def validation_report(y_true: np.ndarray, probs: np.ndarray) -> ValidationReport:
    """A classifier's metrics and reliability table on held-out rows (the monitor's own metric
    code, so validation and production figures are computed alike)."""
    metrics = classification_metrics(y_true, probs.argmax(axis=1), probs, probs.shape[1])
    names = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc", "log_loss")
    return ValidationReport(
        task="classification",
        label_output="label",
        score_output="probabilities",
        rows=len(y_true),
        metrics={name: metrics[name]["value"] for name in names if name in metrics},
        calibration=calibration_table(y_true, probs),
    )


def to_onnx_bytes(estimator: Any, input_name: str, width: int) -> bytes:
    """A fitted scikit-learn classifier as ONNX: outputs ``label`` and ``probabilities``."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    model = to_onnx(
        estimator,
        initial_types=[(input_name, FloatTensorType([None, width]))],
        options={id(estimator): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return bytes(model.SerializeToString())


class DemoTrainer:
    """Standardised logistic regression (``estimator: logistic``) or a random forest
    (``forest``) on the production rows; what the demo model's first versions are."""

    def __init__(self, estimator: str = "logistic", c: float = 1.0, seed: int = 0) -> None:
        if estimator not in ("logistic", "forest"):
            raise TrainerError("DemoTrainer: estimator must be 'logistic' or 'forest'")
        self.estimator = estimator
        self.c = c
        self.seed = seed

    def make(self) -> Any:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.estimator == "forest":
            return RandomForestClassifier(n_estimators=50, max_depth=6, random_state=self.seed)
        return make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=1000))

    def labels(self, dataset: Dataset) -> np.ndarray:
        """The labels to fit (a subclass may change them)."""
        return dataset.y

    def train(self, dataset: Dataset, template: ModelMetadata) -> TrainedModel:
        y = self.labels(dataset)
        classes = max(len(template.class_labels or []), 2)
        if len(np.unique(y)) < 2:
            raise TrainerError("the training rows hold only one class")
        estimator = self.make()
        estimator.fit(dataset.x, y)
        if len(estimator.classes_) != classes:
            raise TrainerError(
                f"the training rows hold {len(estimator.classes_)} of the {classes} classes"
            )
        onnx = to_onnx_bytes(estimator, template.feature_input or "input", dataset.x.shape[1])
        metadata = template.model_copy(
            update={
                "description": f"{template.description.split(' | ')[0]} | retrained "
                f"({self.estimator}) on {dataset.rows} production rows",
                "reference": reference_profile(dataset.x, dataset.features),
                "validation": None,
                "model_sha256": None,
            }
        )
        return TrainedModel(onnx, metadata, {"estimator": self.estimator, "rows": dataset.rows})
