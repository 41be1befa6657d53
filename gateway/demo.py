"""The demo model: scikit-learn classifiers on the bundled breast-cancer data, as ONNX.

Needs the ``demo`` extra (scikit-learn, skl2onnx). Registers two versions in a local registry:
version 1 (logistic regression, alias ``champion``) and version 2 (random forest, alias
``challenger``), with feature names, class labels, a reference profile of the training data and
a validation report on the held-out quarter (metrics and a reliability table).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from monitors.performance import calibration_table, classification_metrics
from monitors.profile import build_profile
from registry_client import (
    FeatureSpec,
    LocalRegistry,
    ModelMetadata,
    ReferenceProfile,
    ValidationReport,
)
from registry_client.metadata import BatchingHints, NumericProfile

__all__ = ["DEMO_MODEL", "build_demo_registry", "reference_profile", "validation_report"]

DEMO_MODEL = "breast_cancer"


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
        metrics={name: metrics[name]["value"] for name in names},
        calibration=calibration_table(y_true, probs),
    )


def build_demo_registry(root: Path) -> LocalRegistry:
    """Train, convert and register the two demo versions (skipped if already registered)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    registry = LocalRegistry(root)
    if DEMO_MODEL in registry.models() and len(registry.versions(DEMO_MODEL)) >= 2:
        return registry
    dataset = load_breast_cancer()
    x = dataset.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, dataset.target, test_size=0.25, random_state=0, stratify=dataset.target
    )
    names = [str(n) for n in dataset.feature_names]
    metadata = ModelMetadata(
        description="Breast cancer (Wisconsin) classifier; scikit-learn's bundled dataset.",
        feature_input="input",
        features=[FeatureSpec(name=n) for n in names],
        class_labels=[str(c) for c in dataset.target_names],
        batching=BatchingHints(warmup_batch_sizes=[1, 8, 64]),
        reference=reference_profile(x_train, names),
    )
    candidates = [
        ("champion", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))),
        ("challenger", RandomForestClassifier(n_estimators=50, max_depth=6, random_state=0)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for alias, estimator in candidates:
            estimator.fit(x_train, y_train)
            report = validation_report(y_test, estimator.predict_proba(x_test))
            onnx_model = to_onnx(
                estimator,
                initial_types=[("input", FloatTensorType([None, len(names)]))],
                options={id(estimator): {"zipmap": False}},
                target_opset={"": 17, "ai.onnx.ml": 3},
            )
            path = Path(tmp) / f"{alias}.onnx"
            path.write_bytes(onnx_model.SerializeToString())
            with_report = metadata.model_copy(update={"validation": report})
            version = registry.register(DEMO_MODEL, path, with_report)
            registry.set_alias_sync(DEMO_MODEL, alias, version)
    return registry
