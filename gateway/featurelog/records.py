"""Turn a served request into its feature-log record: named features, outputs, outcome.

Sampling (a rate, at random or by a hash of the routing key so a whole user is in or out) and
privacy rules (features dropped, or replaced by a keyed hash) are applied here.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from gateway.serving import datatype_of
from monitors.schema import SCHEMA_VERSION, FeatureMatrix, InferenceRecord, Status

__all__ = ["RecordBuilder", "RequestInfo"]

Tensors = dict[str, np.ndarray]


@dataclass(slots=True)
class RequestInfo:
    """What the endpoint knows about a request, apart from its tensors."""

    request_id: str
    time: float
    endpoint: str
    routing_key: str | None = None


class RecordBuilder:
    """Builds records; configured once from the feature-log settings."""

    def __init__(
        self,
        sampling_rate: float = 1.0,
        sample_by: str = "random",
        drop_features: frozenset[str] = frozenset(),
        hash_features: frozenset[str] = frozenset(),
        hash_key: bytes = b"",
    ) -> None:
        self._rate = sampling_rate
        self._by_key = sample_by == "routing_key"
        self._drop = drop_features
        self._hash = hash_features
        self._hash_key = hash_key

    def sampled(self, info: RequestInfo) -> bool:
        """Whether this request is logged."""
        if self._rate >= 1.0:
            return True
        if self._by_key and info.routing_key is not None:
            bucket = zlib.crc32(info.routing_key.encode()) / 0xFFFFFFFF
            return bucket < self._rate
        return random.random() < self._rate

    def build(
        self,
        info: RequestInfo,
        *,
        model: str,
        version: str,
        variant: str,
        role: str,
        feature_input: str | None,
        feature_names: list[str],
        inputs: Tensors | None,
        outputs: Tensors | None,
        rows: int,
        latency_s: float,
        status: Status,
        error: str | None = None,
    ) -> InferenceRecord:
        """The record of one request (inputs/outputs may be absent when it failed early)."""
        record: InferenceRecord = {
            "schema_version": SCHEMA_VERSION,
            "request_id": info.request_id,
            "time": info.time,
            "endpoint": info.endpoint,
            "model": model,
            "version": version,
            "variant": variant,
            "role": "shadow" if role == "shadow" else "primary",
            "rows": rows,
            "latency_s": latency_s,
            "status": status,
        }
        if error is not None:
            record["error"] = error
        if info.routing_key is not None:
            record["routing_key"] = info.routing_key
        if inputs is not None:
            features, raw = self._features(inputs, feature_input, feature_names)
            record["features"] = features
            if raw:
                record["inputs"] = raw
        if outputs is not None:
            record["outputs"] = {name: _column(array) for name, array in outputs.items()}
        return record

    def _features(
        self,
        inputs: Tensors,
        feature_input: str | None,
        names: list[str],
    ) -> tuple[Mapping[str, object], dict[str, dict[str, object]]]:
        features: dict[str, object] = {}
        raw: dict[str, dict[str, object]] = {}
        for input_name, array in inputs.items():
            if input_name == feature_input and array.ndim == 2 and array.shape[1] == len(names):
                if (
                    len(inputs) == 1
                    and not (self._drop or self._hash)
                    and array.dtype.kind in "fiub"
                ):
                    # the hot path: kept as one matrix, the feature log writes it by column
                    if array.dtype == np.float16:
                        array = array.astype(np.float32)
                    return FeatureMatrix(names, array), raw
                self._add(features, names, _columns(array))
            elif array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1):
                self._add(features, [input_name], [_column(array.reshape(-1))])
            else:
                raw[input_name] = {
                    "datatype": datatype_of(array),
                    "shape": list(array.shape),
                    "data": _column(array.reshape(-1)),
                }
        return features, raw

    def _add(
        self, features: dict[str, object], names: list[str], columns: Iterable[object]
    ) -> None:
        if not self._drop and not self._hash:
            features.update(zip(names, columns, strict=True))  # the common case, in C
            return
        for name, column in zip(names, columns, strict=True):
            if name in self._drop:
                continue
            if name in self._hash:
                values = column.tolist() if isinstance(column, np.ndarray) else column
                features[name] = [self._digest(v) for v in values]  # type: ignore[union-attr]
            else:
                features[name] = column

    def _digest(self, value: object) -> str:
        return hmac.new(self._hash_key, str(value).encode(), hashlib.sha256).hexdigest()[:16]


def _columns(matrix: np.ndarray) -> Iterable[object]:
    """The columns of a 2-D tensor, each a contiguous array orjson writes natively."""
    if matrix.dtype.kind in "OUS" or matrix.dtype == np.float16:
        return [_column(matrix[:, j]) for j in range(matrix.shape[1])]
    return np.ascontiguousarray(matrix.T)


def _column(array: np.ndarray) -> object:
    """A value orjson can write: numpy arrays as they are, text arrays as lists."""
    if array.dtype.kind in "OUS":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.tolist()]
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return np.ascontiguousarray(array)
