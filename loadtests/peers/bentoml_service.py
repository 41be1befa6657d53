"""The BentoML service behind the ``bentoml`` benchmark peer (see ``bentoml_server.py``).

One batchable API whose route is the Open Inference Protocol v2 infer path of the model. Its one
parameter is the v2 body's ``inputs`` list, so BentoML parses and validates the v2 JSON body with
its own request handling (pydantic), and its adaptive batching (the CorkDispatcher) concatenates
the ``inputs`` lists of concurrent requests: the API function gets one input tensor per request,
stacks their rows, runs the session once and hands back one answer per tensor, which BentoML
splits back to the requests. The model must have one input; each request carries one tensor of
``[rows, features...]``, so a batch counts requests, not rows (the same for one-row requests).

Served by ``bentoml serve bentoml_service:OnnxModel --arg model=... --arg name=...``; the
arguments are BentoML template arguments (``bentoml.use_arguments``), read at import time
because the route and the batching settings go into the decorators.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated

import bentoml
import numpy as np
import onnxruntime as ort
from bentoml.validators import ContentType
from pydantic import BaseModel, Field, model_validator

__all__ = ["OnnxModel"]

# ONNX Runtime element types and the v2 datatype names, for the types a tabular model uses.
_ORT_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(bool)": "BOOL",
}
_V2_TO_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
_NUMPY_TO_V2 = {np.dtype(t): name for name, t in _V2_TO_NUMPY.items()} | {np.dtype(bool): "BOOL"}


class Arguments(BaseModel):
    model: str
    name: str
    max_batch_size: int = 64
    max_latency_ms: int = 60_000


ARGS = bentoml.use_arguments(Arguments)
# BentoML configures its loggers at INFO before it imports this module, in the arbiter and in the
# worker; WARNING keeps the server quiet.
logging.getLogger("bentoml").setLevel(logging.WARNING)


class _Signature:
    """The model's one input, filled when the service loads the model (in the worker process,
    before it serves), so that request validation can check a tensor against it."""

    name = ""
    datatype = ""
    features: tuple[int | None, ...] = ()  # None: a dimension of any size


class RequestTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]

    @model_validator(mode="after")
    def _matches_model(self) -> RequestTensor:
        if self.name != _Signature.name:
            raise ValueError(f"unknown input {self.name!r}, the model takes {_Signature.name!r}")
        if self.datatype != _Signature.datatype:
            raise ValueError(f"input {self.name!r} is {_Signature.datatype}, not {self.datatype}")
        features = _Signature.features
        if (
            len(self.shape) != len(features) + 1
            or self.shape[0] < 1
            or any(
                want is not None and got != want
                for got, want in zip(self.shape[1:], features, strict=True)
            )
        ):
            raise ValueError(f"shape {self.shape} is not [rows, *{list(features)}]")
        if math.prod(self.shape) != len(self.data):
            raise ValueError(f"shape {self.shape} does not hold {len(self.data)} values")
        return self


class ResponseTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[int] | list[float]


class InferResponse(BaseModel):
    model_name: str
    outputs: list[ResponseTensor]


@bentoml.service(
    name="onnx_model",
    workers=1,
    threads=1,
    logging={"access": {"enabled": False}},
)
class OnnxModel:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(ARGS.model, options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{ARGS.model} has {len(inputs)} inputs, this service takes one")
        _Signature.name = inputs[0].name
        _Signature.datatype = _ORT_TO_V2[inputs[0].type]
        _Signature.features = tuple(d if isinstance(d, int) else None for d in inputs[0].shape[1:])
        self.input_dtype = _V2_TO_NUMPY[_Signature.datatype]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @bentoml.api(
        route=f"/v2/models/{ARGS.name}/infer",
        batchable=True,
        max_batch_size=ARGS.max_batch_size,
        max_latency_ms=ARGS.max_latency_ms,
    )
    def infer(
        self, inputs: Annotated[list[RequestTensor], Field(min_length=1, max_length=1)]
    ) -> Annotated[list[InferResponse], ContentType("application/json")]:
        """One call per batch: ``inputs`` holds one tensor per request, in arrival order."""
        arrays = [np.asarray(t.data, dtype=self.input_dtype).reshape(t.shape) for t in inputs]
        results = self.session.run(self.output_names, {_Signature.name: np.concatenate(arrays)})
        answers = []
        start = 0
        for array in arrays:
            stop = start + array.shape[0]
            outputs = [
                _response_tensor(n, r[start:stop])
                for n, r in zip(self.output_names, results, strict=True)
            ]
            answers.append(InferResponse(model_name=ARGS.name, outputs=outputs))
            start = stop
        return answers


def _response_tensor(name: str, value: np.ndarray) -> ResponseTensor:
    return ResponseTensor(
        name=name,
        datatype=_NUMPY_TO_V2[value.dtype],
        shape=list(value.shape),
        data=value.reshape(-1).tolist(),
    )
