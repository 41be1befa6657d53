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

from monitors.retrain.demo_model import reference_profile, to_onnx_bytes, validation_report
from registry_client import FeatureSpec, LocalRegistry, ModelMetadata
from registry_client.metadata import BatchingHints

__all__ = ["DEMO_MODEL", "build_demo_registry", "reference_profile", "validation_report"]

DEMO_MODEL = "breast_cancer"


def build_demo_registry(root: Path) -> LocalRegistry:
    """Train, convert and register the two demo versions (skipped if already registered)."""
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
            path = Path(tmp) / f"{alias}.onnx"
            path.write_bytes(to_onnx_bytes(estimator, "input", len(names)))
            with_report = metadata.model_copy(update={"validation": report})
            version = registry.register(DEMO_MODEL, path, with_report)
            registry.set_alias_sync(DEMO_MODEL, alias, version)
    return registry
