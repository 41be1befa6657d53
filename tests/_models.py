"""Model versions for traffic tests: one slow, one that fails at run time, and ones whose
class labels (and outputs) differ from the demo's.

All take the demo model's input (``input``, FP32 [N, 30]) and give its outputs (``label``
INT64 [N], ``probabilities`` FP32 [N, 2]), so they can stand in for a new version of it, but
one that takes another input (``x``, FP32 [N, 10]): a version no caller of the demo can use.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from registry_client import LocalRegistry, ModelMetadata

__all__ = [
    "register_classes_version",
    "register_failing_version",
    "register_other_inputs_version",
    "register_slow_version",
]


def _model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    extra_outputs: tuple[onnx.ValueInfoProto, ...] = (),
    source: str = "input",
    width: int = 30,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "test-model",
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, [None, width])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
            *extra_outputs,
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _head(source: str, width: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.normal(size=(width, 2)) * 0.01).astype(np.float32), "w_out")
    nodes = [
        helper.make_node("MatMul", [source, "w_out"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    return nodes, [w]


def slow_model(layers: int = 12, width: int = 1536) -> onnx.ModelProto:
    """Dense layers wide enough that one row costs milliseconds."""
    rng = np.random.default_rng(1)
    nodes: list[onnx.NodeProto] = []
    inits = [
        numpy_helper.from_array((rng.normal(size=(30, width)) * 0.01).astype(np.float32), "w0")
    ]
    nodes.append(helper.make_node("MatMul", ["input", "w0"], ["h0"]))
    for i in range(1, layers + 1):
        w = (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i - 1}", f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"]))
    head, head_inits = _head(f"h{layers}", width)
    return _model(nodes + head, inits + head_inits)


def failing_model() -> onnx.ModelProto:
    """Fails at run time whenever an input value is positive (real data), yet passes warm-up on
    zeros: it reshapes its input to rows of 30 + (max(input) > 0) columns."""
    consts = [
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        numpy_helper.from_array(np.array([30], dtype=np.int64), "thirty"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "zero"], ["positive"]),
        helper.make_node("Cast", ["positive"], ["extra"], to=TensorProto.INT64),
        helper.make_node("Add", ["thirty", "extra"], ["columns"]),
        helper.make_node("Concat", ["minus_one", "columns"], ["shape"], axis=0),
        helper.make_node("Reshape", ["input", "shape"], ["reshaped"]),
    ]
    head, head_inits = _head("reshaped", 30)
    return _model(nodes + head, consts + head_inits)


def risk_model() -> onnx.ModelProto:
    """The demo's outputs and one more with a value per row: ``risk`` (FP32 [N], the largest
    class probability)."""
    nodes, inits = _head("input", 30)
    nodes.append(helper.make_node("ReduceMax", ["probabilities"], ["risk"], axes=[1], keepdims=0))
    risk = helper.make_tensor_value_info("risk", TensorProto.FLOAT, [None])
    return _model(nodes, inits, (risk,))


def other_inputs_model() -> onnx.ModelProto:
    """The demo model's outputs from another input: ``x``, FP32 [N, 10]."""
    nodes, initializers = _head("x", 10)
    return _model(nodes, initializers, source="x", width=10)


def _register(
    registry_root: Path,
    model: onnx.ModelProto,
    alias: str,
    classes: list[str] | None = None,
    feature_input: str = "input",
    width: int = 30,
) -> str:
    registry = LocalRegistry(registry_root)
    metadata = registry_metadata(registry)
    if classes is not None:
        metadata = metadata.model_copy(update={"class_labels": classes})
    if feature_input != metadata.feature_input:
        features = metadata.features[:width]
        metadata = metadata.model_copy(
            update={"feature_input": feature_input, "features": features}
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model.SerializeToString())
        version = registry.register("breast_cancer", path, metadata)
    registry.set_alias_sync("breast_cancer", alias, version)
    return version


def registry_metadata(registry: LocalRegistry) -> ModelMetadata:
    first = registry.root / "breast_cancer" / "1"
    return ModelMetadata.load(first).model_copy(update={"model_sha256": None})


def register_slow_version(registry_root: Path, alias: str = "slow") -> str:
    """Register the slow model as a new version of the demo model; returns the version."""
    return _register(registry_root, slow_model(), alias)


def register_failing_version(registry_root: Path, alias: str = "broken") -> str:
    """Register the failing model as a new version of the demo model; returns the version."""
    return _register(registry_root, failing_model(), alias)


def register_classes_version(
    registry_root: Path, classes: list[str], alias: str, *, risk: bool = False
) -> str:
    """Register a version of the demo model with these class labels (a retrained classifier
    that gained a class, an export that orders them otherwise), with the ``risk`` output too
    when asked; returns the version."""
    return _register(registry_root, risk_model() if risk else _model(*_head("input", 30)),
                     alias, classes)  # fmt: skip


def register_other_inputs_version(registry_root: Path, alias: str = "other") -> str:
    """Register a version of the demo model that takes another input (its first 10 features,
    as ``x``); returns the version."""
    return _register(registry_root, other_inputs_model(), alias, feature_input="x", width=10)
