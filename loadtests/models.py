"""Benchmark models, written as ONNX files and registered in a local registry.

- ``mlp``: a tabular MLP, 32 float inputs, two hidden layers of 256, 2 classes: scikit-learn's
  MLPClassifier trained on ``make_classification`` data, converted with skl2onnx.
- version 2 of ``mlp``: the same network trained from another seed (splits and shadows).
- ``heavy``: four hidden layers of 2048 (random weights, built with onnx.helper): measured here,
  a single-row call costs 2.9 ms on one thread (342 rows/s) and a 128-row batch 49 ms
  (2,624 rows/s), so batching, not HTTP, decides throughput.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from registry_client import FeatureSpec, LocalRegistry, ModelMetadata

__all__ = ["build_heavy_mlp", "build_mlp", "register_benchmark_models"]

FEATURES = 32


def build_mlp(seed: int = 0) -> onnx.ModelProto:
    """The tabular MLP (input ``input`` FP32 [N, 32]; outputs ``label``, ``probabilities``)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = make_classification(n_samples=4000, n_features=FEATURES, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=30, random_state=seed)
    with warnings.catch_warnings():  # 30 epochs are plenty for a benchmark model
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x.astype(np.float32), y)
    model: onnx.ModelProto = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, FEATURES]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return model


def build_heavy_mlp(width: int = 2048, layers: int = 4) -> onnx.ModelProto:
    """Dense layers of ``width`` (random weights): the compute-heavy model."""
    rng = np.random.default_rng(0)
    inits, nodes, previous, fan_in = [], [], "input", FEATURES
    for i in range(layers):
        w = (rng.normal(size=(fan_in, width)) / np.sqrt(fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"]))
        previous, fan_in = f"h{i}", width
    w_out = (rng.normal(size=(width, 2)) / np.sqrt(width)).astype(np.float32)
    inits.append(numpy_helper.from_array(w_out, "w_out"))
    nodes += [
        helper.make_node("MatMul", [previous, "w_out"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "heavy-mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, FEATURES])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def register_benchmark_models(root: Path) -> dict[str, Path]:
    """Register ``mlp`` (versions 1 and 2, a second training seed for splits and shadows),
    ``heavy`` and the demo's ``breast_cancer``, alias ``champion`` on the first version of each;
    returns the champions' model files."""
    from gateway.demo import DEMO_MODEL, build_demo_registry

    registry = LocalRegistry(root)
    metadata = ModelMetadata(features=[FeatureSpec(name=f"f{i}") for i in range(FEATURES)])
    builds: dict[str, list[Callable[[], onnx.ModelProto]]] = {
        "mlp": [build_mlp, lambda: build_mlp(seed=1)],
        "heavy": [build_heavy_mlp],
    }
    files: dict[str, Path] = {}
    for name, versions in builds.items():
        if name not in registry.models():
            for build in versions:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "model.onnx"
                    path.write_bytes(build().SerializeToString())
                    registry.register(name, path, metadata)
            registry.set_alias_sync(name, "champion", registry.versions(name)[0])
        files[name] = root / name / registry.aliases(name)["champion"] / "model.onnx"
    build_demo_registry(root)
    files[DEMO_MODEL] = root / DEMO_MODEL / registry.aliases(DEMO_MODEL)["champion"] / "model.onnx"
    return files
