from __future__ import annotations

import numpy as np
import pytest

from monitors.categories import OTHER, UNLABELLED, category_label, count_categories


@pytest.mark.parametrize(
    ("values", "dtype", "label"),
    [
        (
            [True, "True", "true", " TRUE ", 1, "1", "1.0", 1.0, np.bool_(True), np.int64(1)],
            "bool",
            "true",
        ),
        ([False, "False", "false", 0, "0", 0.0, "0.0"], "bool", "false"),
        ([1, 1.0, "1", "1.0", np.float32(1.0), np.int8(1), True], "int", "1"),
        ([2, 2.0, "2.0"], "float", "2"),
        ([0.5, "0.5", np.float64(0.5)], "float", "0.5"),
        (["red"], "string", "red"),
        ([7, 7.0], "string", "7"),
        ([True, "true", "True"], None, "true"),
        ([3, "3.0", 3.0], None, "3"),
    ],
)
def test_one_category_whatever_its_encoding(
    values: list[object], dtype: str | None, label: str
) -> None:
    assert {category_label(v, dtype) for v in values} == {label}


@pytest.mark.parametrize("dtype", ["bool", "int", "float", "string", None])
def test_none_nan_and_empty_text_are_missing(dtype: str | None) -> None:
    for value in (None, float("nan"), np.float32("nan"), "", "  "):
        assert category_label(value, dtype) is None


def test_text_is_kept_as_it_is_for_string_features() -> None:
    assert category_label("1.0", "string") == "1.0"
    assert category_label("True", "string") == "True"
    assert category_label("yes", "bool") == "yes"  # not a boolean: a category of its own


def test_counts_merge_encodings_count_missing_and_fold_the_unknown_into_other() -> None:
    values = [1, 1.0, "1", True, 0, "0.0", None, "", 2, "7"]
    counts, missing = count_categories(values, "int", known={"0": 1, "1": 1})
    assert counts == {"1": 4, "0": 2, OTHER: 2}
    assert missing == 2
    counts, missing = count_categories([[1, 2], [1, 2], None], None)  # lists: labelled as JSON
    assert counts == {"[1,2]": 2}
    assert missing == 1


def test_a_value_nested_past_what_json_writes_is_one_category() -> None:
    # a list 300 deep in a logged categorical feature raised TypeError (Recursion limit
    # reached) out of the windows: the monitor stopped at that record, and again on restart
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    assert category_label(deep, None) == UNLABELLED
    counts, missing = count_categories([deep, {"a": deep}, "red"], "string", known={"red": 1})
    assert counts == {OTHER: 2, "red": 1}
    assert missing == 0
