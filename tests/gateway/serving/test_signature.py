"""Which inputs hold a model's named features; what a new version may change of its tensors."""

from __future__ import annotations

import pytest

from gateway.serving import Signature, TensorSpec, feature_input, per_feature_inputs
from gateway.serving.signature import breaking_changes
from registry_client import FeatureSpec, ModelMetadata


def signature(*inputs: TensorSpec) -> Signature:
    return Signature(inputs=inputs, outputs=(TensorSpec("label", "INT64", (-1,)),))


def metadata(*names: str) -> ModelMetadata:
    return ModelMetadata(features=[FeatureSpec(name=n) for n in names])


def column(name: str) -> TensorSpec:
    return TensorSpec(name, "FP32", (-1, 1))


def test_one_2d_input_of_matching_width_holds_the_features() -> None:
    assert feature_input(signature(TensorSpec("X", "FP32", (-1, 2))), metadata("a", "b"))
    assert feature_input(signature(TensorSpec("X", "FP32", (-1, -1))), metadata("a", "b"))
    assert feature_input(signature(TensorSpec("X", "FP32", (-1, 3))), metadata("a", "b")) is None


@pytest.mark.parametrize(
    ("features", "inputs", "expected"),
    [
        (["a", "b"], ["b", "a"], {"a": "a", "b": "b"}),
        # skl2onnx's clean-up: C-style names, a leading digit prefixed, collisions numbered
        (
            ["od280/od315", "1st", "a b", "a-b", "x+y"],
            ["od280_od315", "_1st", "a_b", "a_b1", "x+y"],
            {
                "od280/od315": "od280_od315",
                "1st": "_1st",
                "a b": "a_b",
                "a-b": "a_b1",
                "x+y": "x+y",
            },
        ),
        (["a", "b"], ["a", "c"], {}),
        (["a"], ["a", "b"], {}),
    ],
)
def test_one_input_per_feature_maps_names_back(
    features: list[str], inputs: list[str], expected: dict[str, str]
) -> None:
    sig = signature(*(column(n) for n in inputs))
    assert per_feature_inputs(sig, metadata(*features)) == expected


def test_a_2d_model_has_no_per_feature_inputs() -> None:
    sig = signature(TensorSpec("X", "FP32", (-1, 1)))
    assert feature_input(sig, metadata("a")) is not None
    assert per_feature_inputs(sig, metadata("a")) == {}


def test_a_new_version_may_open_a_dimension_and_add_outputs_but_break_nothing() -> None:
    serving = Signature(
        inputs=(TensorSpec("X", "FP32", (-1, 30)), TensorSpec("k", "INT64", (-1, 1))),
        outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("p", "FP32", (-1, 2))),
    )
    assert breaking_changes(serving, serving) == []
    relaxed = Signature(
        inputs=(TensorSpec("k", "INT64", (-1, -1)), TensorSpec("X", "FP32", (-1, 30))),
        outputs=(*serving.outputs, TensorSpec("extra", "FP32", (-1,))),
    )
    assert breaking_changes(serving, relaxed) == []
    broken = Signature(
        inputs=(TensorSpec("X", "FP64", (-1, 30)), TensorSpec("k", "INT64", (-1, 2)),
                TensorSpec("new", "FP32", (-1,))),
        outputs=(TensorSpec("label", "INT32", (-1,)),),
    )  # fmt: skip
    assert breaking_changes(serving, broken) == [
        "input 'X' takes FP64, not FP32",
        "input 'k' takes shape [-1, 2], not [-1, 1]",
        "input 'new' is new",
        "output 'label' is INT32, not INT64",
        "output 'p' is gone",
    ]
    assert breaking_changes(serving, Signature(inputs=serving.inputs[:1], outputs=())) == [
        "input 'k' is gone",
        "output 'label' is gone",
        "output 'p' is gone",
    ]
