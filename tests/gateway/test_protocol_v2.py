from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np
import orjson
import pytest

from gateway.errors import InvalidInputError
from gateway.protocol import parse_infer_request, render_infer_response
from monitors.feedback import id_problem


def body(*inputs: Mapping[str, object], **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def test_flat_and_nested_data_give_the_same_tensor() -> None:
    flat = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    nested = {**flat, "data": [[1, 2], [3, 4]]}
    a = parse_infer_request(body(flat)).inputs["x"]
    b = parse_infer_request(body(nested)).inputs["x"]
    assert a.dtype == np.float32
    assert a.shape == (2, 2)
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("BOOL", [True, False], np.bool_),
        ("UINT8", [1, 255], np.uint8),
        ("INT8", [-1, 2], np.int8),
        ("INT16", [-1, 2], np.int16),
        ("UINT16", [1, 2], np.uint16),
        ("INT32", [-1, 2], np.int32),
        ("UINT32", [1, 2], np.uint32),
        ("INT64", [-1, 2], np.int64),
        ("UINT64", [1, 2], np.uint64),
        ("FP16", [0.5, 1.5], np.float16),
        ("FP64", [0.5, 1.5], np.float64),
        ("BYTES", ["a", "bc"], np.object_),
    ],
)
def test_every_datatype_parses(datatype: str, data: list[object], dtype: type) -> None:
    raw = {"name": "x", "shape": [2], "datatype": datatype, "data": data}
    array = parse_infer_request(body(raw)).inputs["x"]
    assert array.dtype == np.dtype(dtype)
    assert array.tolist() == data


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}, "needs 3 values"),
        ({"name": "x", "shape": [2], "datatype": "FP99", "data": [1, 2]}, "datatype 'FP99'"),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", 1]}, "FP32 data holds str"),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": [1, "2.5"]}, "holds str values"),
        ({"name": "x", "shape": [2], "datatype": "INT64", "data": [1, 2.5]}, "JSON integers"),
        ({"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}, "true/false"),
        ({"name": "x", "shape": [1] * 65, "datatype": "FP32", "data": [1]}, "32 dimensions"),
        ({"name": "x", "shape": [2], "datatype": "INT8", "data": [1, 1000]}, "does not fit INT8"),
        ({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}, "non-negative"),
        ({"name": "x", "shape": [2], "datatype": "FP32"}, "has no 'data'"),
        ({"shape": [1], "datatype": "FP32", "data": [1]}, "needs a 'name'"),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": [True, False]}, "bool values"),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, [True]]}, "bool values"),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}, "FP32"),
        ({"name": "x", "shape": [2], "datatype": "BOOL", "data": [True, None]}, "NoneType"),
        ({"name": "x", "shape": [2], "datatype": "INT64", "data": [1, None]}, "NoneType"),
        ({"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", 1]}, "int values"),
        ({"name": "x", "shape": [1], "datatype": ["FP32"], "data": [1]}, r"datatype \['FP32'\]"),
        ({"name": "x", "shape": [1], "datatype": {"a": 1}, "data": [1]}, "datatype {'a': 1}"),
        # no values, but sizes no array can have: over 2**63, or others whose product overflows
        ({"name": "x", "shape": [0, 2**63], "datatype": "FP32", "data": []}, "too large"),
        ({"name": "x", "shape": [2**62, 0], "datatype": "FP32", "data": []}, "too large"),
        ({"name": "x", "shape": [2**40, 2**40, 0], "datatype": "FP32", "data": []}, "too large"),
    ],
)
def test_bad_inputs_are_named_in_the_error(raw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_infer_request(body(raw))


@pytest.mark.parametrize("datatype", ["INT64", "UINT64", "INT8"])
@pytest.mark.parametrize("value", [b"1180591620717411303424", b"-18446744073709551616"])
def test_an_integer_beyond_64_bits_is_named_out_of_range(datatype: str, value: bytes) -> None:
    # JSON reads it as a float: the error said "send JSON integers" to a caller who had
    raw = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "%s", "data": [%s]}]}'
    with pytest.raises(InvalidInputError, match=f"more than 64 bits .*out of {datatype}'s range"):
        parse_infer_request(raw % (datatype.encode(), value))


def test_null_is_a_missing_value_in_float_and_string_inputs() -> None:
    inputs = parse_infer_request(
        body(
            {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, None]},
            {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], [None]]},
        )
    ).inputs
    assert inputs["x"][0] == 1.5
    assert np.isnan(inputs["x"][1])
    assert inputs["s"].tolist() == [["a"], [""]]  # what the model gets; the monitor: missing


def test_malformed_bodies_are_refused() -> None:
    for raw in (b"not json", b"[1, 2]", b'{"inputs": []}', b'{"inputs": {}}'):
        with pytest.raises(InvalidInputError):
            parse_infer_request(raw)
    x = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    with pytest.raises(InvalidInputError, match="given twice"):
        parse_infer_request(body(x, x))


def test_an_output_requested_twice_is_refused() -> None:
    # every copy would be rendered again: a short body could ask for an answer of gigabytes
    x = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    twice = [{"name": "a"}, {"name": "b"}, {"name": "a", "parameters": {"binary_data": True}}]
    with pytest.raises(InvalidInputError, match="output 'a' is requested twice"):
        parse_infer_request(body(x, outputs=twice))


def test_binary_inputs_follow_the_json_header_in_order() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    words = [b"hello", b"\xc3\xa9t\xc3\xa9"]
    encoded_words = b"".join(struct.pack("<I", len(w)) + w for w in words)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "a", "shape": [2, 3], "datatype": "FP32",
                 "parameters": {"binary_data_size": a.nbytes}},
                {"name": "w", "shape": [2], "datatype": "BYTES",
                 "parameters": {"binary_data_size": len(encoded_words)}},
                {"name": "j", "shape": [1], "datatype": "INT64", "data": [5]},
            ]
        }
    )  # fmt: skip
    request = parse_infer_request(header + a.tobytes() + encoded_words, len(header))
    assert np.array_equal(request.inputs["a"], a)
    assert request.inputs["w"].tolist() == ["hello", "été"]
    assert request.inputs["j"].tolist() == [5]


def test_binary_sizes_that_do_not_add_up_are_refused() -> None:
    header = orjson.dumps(
        {"inputs": [{"name": "a", "shape": [2], "datatype": "FP32",
                     "parameters": {"binary_data_size": 8}}]}
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match="runs past the end"):
        parse_infer_request(header + b"\0" * 4, len(header))
    with pytest.raises(InvalidInputError, match="declare 8 bytes"):
        parse_infer_request(header + b"\0" * 12, len(header))
    with pytest.raises(InvalidInputError, match="outside the body"):
        parse_infer_request(header, len(header) + 10)


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_a_binary_input_of_no_values_in_an_impossible_shape_is_refused(datatype: str) -> None:
    header = orjson.dumps(
        {"inputs": [{"name": "a", "shape": [0, 2**62], "datatype": datatype,
                     "parameters": {"binary_data_size": 0}}]}
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match="too large"):
        parse_infer_request(header, len(header))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"parameters": {"binary_data_output": "true"}}, "request: parameter binary_data_output"),
        ({"parameters": {"binary_data_output": 1}}, "request: parameter binary_data_output"),
        ({"outputs": [{"name": "a", "parameters": {"binary_data": "yes"}}]},
         "output 'a': parameter binary_data must be true or false, not 'yes'"),
    ],
)  # fmt: skip
def test_binary_flags_that_are_not_booleans_are_refused(
    extra: dict[str, object], message: str
) -> None:
    # read as false, they gave JSON to a caller that asked for binary
    x = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    with pytest.raises(InvalidInputError, match=message):
        parse_infer_request(body(x, **extra))
    assert not parse_infer_request(body(x, parameters={"binary_data_output": None})).binary_output


@pytest.mark.parametrize("given", ["", " ", "a\nb", "x" * 257, "x" * 256, "req-7", "héé"])
def test_an_id_is_taken_exactly_when_feedback_can_name_it(given: str) -> None:
    # an id taken here that feedback refuses ("" was) leaves its predictions unlabelable
    x = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    if id_problem(given, "id") is None:
        assert parse_infer_request(body(x, id=given)).id == given
    else:
        with pytest.raises(InvalidInputError, match="'id' must be non-empty printable text"):
            parse_infer_request(body(x, id=given))


def test_response_echoes_id_and_honours_requested_outputs() -> None:
    raw = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    request = parse_infer_request(body(raw, id="req-7", outputs=[{"name": "b"}]))
    outputs: dict[str, np.ndarray] = {
        "a": np.array([1.0], np.float32),
        "b": np.array([[1, 2]], np.int64),
    }
    payload, header_length = render_infer_response("m", "3", request, outputs)
    assert header_length is None
    doc = orjson.loads(payload)
    assert doc == {
        "model_name": "m",
        "model_version": "3",
        "id": "req-7",
        "outputs": [{"name": "b", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}],
    }


def test_binary_outputs_when_asked_per_output_or_for_all() -> None:
    raw = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    outputs = {"a": np.array([1.5, 2.5], np.float32), "s": np.array(["hi"], dtype=object)}
    request = parse_infer_request(body(raw, parameters={"binary_data_output": True}))
    payload, header_length = render_infer_response("m", "1", request, outputs)
    assert header_length is not None
    doc = orjson.loads(payload[:header_length])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    assert sizes == [8, 6]
    rest = payload[header_length:]
    assert np.frombuffer(rest[:8], dtype="<f4").tolist() == [1.5, 2.5]
    assert rest[8:] == struct.pack("<I", 2) + b"hi"

    one = parse_infer_request(
        body(raw, outputs=[{"name": "a"}, {"name": "s", "parameters": {"binary_data": True}}])
    )
    payload, header_length = render_infer_response("m", "1", one, outputs)
    assert header_length is not None
    doc = orjson.loads(payload[:header_length])
    assert doc["outputs"][0]["data"] == [1.5, 2.5]
    assert doc["outputs"][1]["parameters"] == {"binary_data_size": 6}
