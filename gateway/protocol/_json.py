"""Reading a JSON object from a request body, with the error every endpoint gives."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidInputError
from monitors.feedback import MAX_REQUEST_ID_CHARS

__all__ = ["MAX_DIMS", "check_scalars", "load_object", "request_id"]


def load_object(body: bytes | memoryview) -> dict[str, Any]:
    """The body as a JSON object, or InvalidInputError saying what is wrong with it."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInputError("request body must be a JSON object")
    return doc


def request_id(doc: dict[str, Any]) -> str | None:
    """The optional string ``id`` of a request."""
    value = doc.get("id")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError("'id' must be a string")
    # the id is echoed in the x-request-id header: no control characters, bounded length
    # (and feedback names it: one rule for both, or labels for an id taken here, "" say, would
    # be refused there)
    if not value or len(value) > MAX_REQUEST_ID_CHARS or not value.isprintable():
        raise InvalidInputError(
            f"'id' must be non-empty printable text of at most {MAX_REQUEST_ID_CHARS} characters"
        )
    return value


# Tensors of more dimensions are refused (numpy 1 stops at 32, numpy 2 at 64).
MAX_DIMS = 32

# The JSON types a tensor of each kind of datatype takes: a numeric string, a boolean in a
# number tensor or a fraction in an integer tensor would otherwise be cast without a word.
# null is a missing value where the tensor can hold one: NaN in a float tensor (refused later
# unless server.allow_nan), "" in a BYTES tensor (the parsers put it there).
_TYPES: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool}),
    "INT": frozenset({int}),
    "UINT": frozenset({int}),
    "FP": frozenset({int, float, type(None)}),
    "BYTES": frozenset({str, type(None)}),
}


def check_scalars(data: list[Any], datatype: str) -> str | None:
    """What is wrong with the JSON values of a ``datatype`` tensor (flat or nested), or None.

    >>> check_scalars([1.5, "2"], "FP32")
    "FP32 data holds str values ('2'); send JSON numbers"
    """
    allowed = _TYPES[datatype.rstrip("0123456789")]
    found = _types(data, 0)
    if found is None:
        return f"data is nested deeper than {MAX_DIMS} dimensions"
    wrong = found - allowed
    if not wrong:
        return None
    kind = sorted(t.__name__ for t in wrong)
    example = _first_of(data, tuple(wrong))
    want = {"BOOL": "true/false", "BYTES": "strings"}.get(datatype, "JSON numbers")
    if allowed == {int}:
        want = "JSON integers"
        if isinstance(example, float) and example.is_integer() and abs(example) >= 2**64:
            # orjson reads an integer beyond 64 bits as a float: "send JSON integers" would
            # tell a caller who did to do what it did
            return (
                f"{datatype} data holds an integer of more than 64 bits ({example:.17g}), "
                f"out of {datatype}'s range"
            )
    return f"{datatype} data holds {'/'.join(kind)} values ({example!r}); send {want}"


def _types(data: list[Any], depth: int) -> set[type] | None:
    if depth >= MAX_DIMS:
        return None
    types = set(map(type, data))
    if list in types:
        types.discard(list)
        for item in data:
            if type(item) is list:
                inner = _types(item, depth + 1)
                if inner is None:
                    return None
                types |= inner
    return types


def _first_of(data: list[Any], kinds: tuple[type, ...]) -> object:
    for item in data:
        if type(item) is list:
            found = _first_of(item, kinds)
            if found is not None:
                return found
        elif type(item) in kinds:
            return item
    return None
