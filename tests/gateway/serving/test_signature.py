"""Which inputs hold a model's named features."""

from __future__ import annotations

import pytest

from gateway.serving import Signature, TensorSpec, feature_input, per_feature_inputs
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
