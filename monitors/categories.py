"""Category labels: one text per category whatever its encoding, so a value profiled from a CSV
(``"1.0"``, ``"True"``) and the same value logged live (``1``, ``true``) count as one category.

The feature's declared type (``FeatureSpec.dtype`` in the model's metadata) decides:

- ``bool``: true, "True", "true", 1, "1", "1.0" are ``"true"``; their opposites ``"false"``;
- ``int`` and ``float`` (integer-coded categories): numbers and numeric text by value, ``1``,
  ``1.0`` and ``"1.0"`` all ``"1"``;
- ``string``: the text as it is (a number sent where text goes reads as its value);
- unknown (a predicted output, a profile without types): numeric text by value, true/false in
  any case as ``"true"``/``"false"``, other text as it is.

``None``, NaN and the empty string are missing values, never a category. A list or object is
labelled by its JSON; one JSON cannot write (nested past 254 levels) is ``UNLABELLED``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from numbers import Integral, Real
from typing import Any

import orjson

__all__ = ["OTHER", "UNLABELLED", "category_label", "count_categories"]

OTHER = "__other__"  # the bucket for categories the reference never saw
UNLABELLED = "__unlabelled__"  # a value with no JSON to stand for it (nested too deep)

_TRUE = frozenset(("true", "1", "1.0"))
_FALSE = frozenset(("false", "0", "0.0"))


def _number(value: float) -> str | None:
    if math.isnan(value):
        return None
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(float(value))


def category_label(value: Any, dtype: str | None = None) -> str | None:
    """The category a value stands for under the feature's declared type; None when missing."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if dtype == "string":
            return value
        lowered = text.lower()
        if dtype == "bool" or lowered in ("true", "false"):
            if lowered in _TRUE:
                return "true"
            if lowered in _FALSE:
                return "false"
        try:
            return _number(float(text))
        except ValueError:
            return value
    if isinstance(value, bool) or (hasattr(value, "dtype") and value.dtype.kind == "b"):
        if dtype in ("int", "float"):
            return "1" if value else "0"
        return "true" if value else "false"
    if isinstance(value, Integral):
        integer = int(value)
        if dtype == "bool" and integer in (0, 1):
            return "true" if integer else "false"
        return str(integer)
    if isinstance(value, Real):
        number = float(value)
        if dtype == "bool" and number in (0.0, 1.0):
            return "true" if number else "false"
        return _number(number)
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()  # a list, say
    except orjson.JSONEncodeError:
        return UNLABELLED


def count_categories(
    values: Iterable[Any], dtype: str | None, known: Mapping[str, int] | None = None
) -> tuple[dict[str, int], int]:
    """(count per category, missing values) of a feature's values; with ``known``, categories
    not in it count as ``OTHER``."""
    values = list(values)
    try:
        # by type and value: True, 1 and 1.0 are equal keys in Python but may be labelled apart
        raw = Counter(zip(map(type, values), values, strict=True))
    except TypeError:  # unhashable values (lists): label each
        raw = Counter((str, category_label(v, dtype) or "") for v in values)
    counts: dict[str, int] = {}
    missing = 0
    for (_, value), n in raw.items():
        label = category_label(value, dtype)
        if label is None:
            missing += n
            continue
        if known is not None and label not in known:
            label = OTHER
        counts[label] = counts.get(label, 0) + n
    return counts, missing
