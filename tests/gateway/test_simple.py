from __future__ import annotations

import numpy as np
import orjson
import pytest

from gateway.errors import InvalidInputError
from gateway.inference import validate_inputs
from gateway.protocol import parse_instances, render_predictions
from gateway.serving.signature import Signature, TensorSpec
from registry_client import FeatureSpec, ModelMetadata

TABULAR = Signature(
    inputs=(TensorSpec("input", "FP32", (-1, 3)),),
    outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 2))),
)
FEATURES = ModelMetadata(features=[FeatureSpec(name=n) for n in ("a", "b", "c")])


def test_named_features_become_columns_in_metadata_order() -> None:
    body = orjson.dumps({"id": "r", "instances": [{"c": 3, "a": 1, "b": 2}, [4, 5, 6]]})
    request_id, inputs = parse_instances(body, TABULAR, FEATURES)
    assert request_id == "r"
    assert inputs["input"].dtype == np.float32
    assert inputs["input"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_single_row_form() -> None:
    _, inputs = parse_instances(
        orjson.dumps({"features": {"a": 1, "b": 2, "c": 3}}), TABULAR, FEATURES
    )
    assert inputs["input"].shape == (1, 3)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"instances": [{"a": 1, "b": 2}]}, r"instances\[0\]: missing features \['c'\]"),
        ({"instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]}, r"unknown features \['d'\]"),
        ({"instances": [{"a": 1, "b": "x", "c": 3}]}, r"instances\[0\] feature 'b': 'x'"),
        ({"instances": [[1, 2]]}, "has 2 values, the model takes 3"),
        ({"instances": []}, "non-empty"),
        ({"rows": []}, "needs 'instances'"),
    ],
)
def test_bad_rows_are_named(doc: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_instances(orjson.dumps(doc), TABULAR, FEATURES)


def test_models_without_feature_names_take_inputs_by_name() -> None:
    signature = Signature(
        inputs=(TensorSpec("age", "INT64", (-1, 1)), TensorSpec("city", "BYTES", (-1, 1))),
        outputs=(TensorSpec("y", "FP32", (-1,)),),
    )
    body = orjson.dumps({"instances": [{"age": 30, "city": "Lyon"}, {"age": 41, "city": "Oslo"}]})
    _, inputs = parse_instances(body, signature, ModelMetadata())
    assert inputs["age"].tolist() == [[30], [41]]
    assert inputs["city"].tolist() == [["Lyon"], ["Oslo"]]


def test_predictions_hold_one_object_per_row() -> None:
    outputs: dict[str, np.ndarray] = {
        "label": np.array([0, 1], dtype=np.int64),
        "probabilities": np.array([[0.75, 0.25], [0.5, 0.5]], dtype=np.float32),
    }
    doc = orjson.loads(render_predictions("m", "2", None, outputs))
    assert doc["predictions"] == [
        {"label": 0, "probabilities": [0.75, 0.25]},
        {"label": 1, "probabilities": [0.5, 0.5]},
    ]
    assert "id" not in doc


def test_one_input_per_feature_takes_the_features_own_names() -> None:
    signature = Signature(
        inputs=(TensorSpec("od280_od315", "FP32", (-1, 1)), TensorSpec("hue", "FP32", (-1, 1))),
        outputs=(TensorSpec("y", "FP32", (-1,)),),
    )
    metadata = ModelMetadata(features=[FeatureSpec(name="od280/od315"), FeatureSpec(name="hue")])
    mapping = {"od280/od315": "od280_od315", "hue": "hue"}
    body = orjson.dumps({"instances": [{"od280/od315": 3.1, "hue": 1.0}, [2.5, 0.5]]})
    _, inputs = parse_instances(body, signature, metadata, mapping)
    assert inputs["od280_od315"].tolist() == [[pytest.approx(3.1)], [2.5]]
    assert inputs["hue"].tolist() == [[1.0], [0.5]]
    wrong = orjson.dumps({"features": {"od280_od315": 3.1, "hue": 1.0}})
    with pytest.raises(InvalidInputError, match=r"expected features \['hue', 'od280/od315'\]"):
        parse_instances(wrong, signature, metadata, mapping)


def test_null_is_a_missing_value_where_the_model_can_take_one() -> None:
    signature = Signature(
        inputs=(
            TensorSpec("income", "FP32", (-1, 1)),
            TensorSpec("city", "BYTES", (-1, 1)),
            TensorSpec("member", "BOOL", (-1, 1)),
        ),
        outputs=(TensorSpec("label", "INT64", (-1,)),),
    )
    body: dict[str, list[dict[str, object]]] = {
        "instances": [{"income": None, "city": None, "member": True}]
    }
    _, inputs = parse_instances(orjson.dumps(body), signature, ModelMetadata())
    assert np.isnan(inputs["income"][0, 0])  # NaN for a float input
    assert inputs["city"].tolist() == [[""]]  # "" for a string input: the monitor's missing
    body = {"instances": [{"income": 1.0, "city": "x", "member": None}]}
    with pytest.raises(InvalidInputError, match=r"'member': None is not a valid BOOL"):
        parse_instances(orjson.dumps(body), signature, ModelMetadata())


@pytest.mark.parametrize(("value", "reads_as"), [(None, "null is NaN"), (1e300, "beyond FP32's")])
def test_a_value_that_becomes_nan_or_infinity_is_found_and_explained(
    value: object, reads_as: str
) -> None:
    # the caller sent no NaN and no infinity (JSON has neither): the error said only that the
    # tensor held some, naming an input the simple form never names
    body = orjson.dumps({"instances": [[1, 2, 3], [4, 5, 6], [7, value, 9]]})
    with np.errstate(over="ignore"):  # 1e300 to FP32: numpy warns of the overflow
        _, inputs = parse_instances(body, TABULAR, FEATURES)
    with pytest.raises(InvalidInputError, match=r"the first at index \[2, 1\]") as refused:
        validate_inputs(TABULAR, inputs, allow_nan=False)
    assert reads_as in str(refused.value)
