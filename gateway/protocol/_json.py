"""Reading a JSON object from a request body, with the error every endpoint gives."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidInputError

__all__ = ["load_object", "request_id"]


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
    if len(value) > 256 or not value.isprintable():
        raise InvalidInputError("'id' must be printable text of at most 256 characters")
    return value
