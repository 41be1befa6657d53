"""A version's classes in its model's class space: indices, probability columns and the
calibration table mapped by name."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitors.class_space import (
    MAX_LISTED_CLASSES,
    ClassLabelError,
    VersionClasses,
    class_positions,
    label_class,
    listed_classes,
    predicted_class,
)
from monitors.estimate import estimate_classification
from monitors.performance import calibration_table

SPACE = ["setosa", "versicolor", "virginica"]


def test_a_version_in_another_order_maps_by_name() -> None:
    classes = VersionClasses.of(["virginica", "setosa", "versicolor"], SPACE)
    assert classes.index == (2, 0, 1)
    space_row = np.frombuffer(classes.probabilities([0.7, 0.2, 0.1]) or b"", np.float32)
    assert space_row.tolist() == pytest.approx([0.2, 0.1, 0.7])
    assert classes.probabilities([0.5, 0.5]) is None  # not one per class of the version
    # the same order: the row as it is
    same = VersionClasses.of(SPACE, SPACE)
    assert same.same
    assert VersionClasses.of(["a", "a", "b"], ["a", "a", "b"]).index == (0, 1, 2)  # as logged
    assert same.probabilities([0.7, 0.2, 0.1]) == np.asarray([0.7, 0.2, 0.1], np.float32).tobytes()


def test_classes_one_side_lacks() -> None:
    fewer = VersionClasses.of(["virginica", "setosa"], SPACE)  # no probability of versicolor
    assert fewer.index == (2, 0)
    space_row = np.frombuffer(fewer.probabilities([0.9, 0.1]) or b"", np.float32)
    assert space_row.tolist() == pytest.approx([0.1, 0.0, 0.9])
    more = VersionClasses.of(["virginica", "hybrid", "setosa", "versicolor"], SPACE)
    assert more.index == (2, -1, 0, 1)  # "hybrid" has no place in the space
    assert more.probabilities([0.1, 0.6, 0.2, 0.1]) is None  # not a distribution over it


def test_the_estimate_is_the_same_in_either_order() -> None:
    # The calibration table is per class in the version's order: applied to probabilities in
    # the space's order it would calibrate each class with another class's table.
    rng = np.random.default_rng(1)
    version = ["virginica", "setosa", "versicolor"]
    probs = rng.dirichlet([1.0, 2.0, 3.0], size=500)
    truth = np.array([rng.choice(3, p=p) for p in probs])
    table = calibration_table(truth, probs)
    classes = VersionClasses.of(version, SPACE)
    in_space = np.stack(
        [np.frombuffer(classes.probabilities(row.tolist()) or b"", np.float32) for row in probs]
    ).astype(np.float64)
    mapped = classes.calibration(table)
    assert mapped is not None
    assert mapped.rates[0] == table.rates[1]  # setosa's row
    own = estimate_classification(probs.astype(np.float32).astype(np.float64), table)
    space = estimate_classification(in_space, mapped)
    for metric in ("accuracy", "macro_recall", "macro_f1"):
        assert space[metric]["value"] == pytest.approx(own[metric]["value"]), metric
    unmapped = estimate_classification(in_space, table)  # each class calibrated as another
    assert unmapped["accuracy"]["value"] != pytest.approx(own["accuracy"]["value"])
    # classes one side lacks: no table to map, the estimate goes uncalibrated
    assert VersionClasses.of(["virginica", "setosa"], SPACE).calibration(table) is None


def test_a_predicted_class_is_a_class_name_or_an_index_into_the_names() -> None:
    assert predicted_class("virginica", SPACE) == 2
    # the model's own output: a classifier trained on targets "0", "1", ... answers "1"
    assert predicted_class("1", SPACE) == predicted_class(1.0, SPACE) == 1
    for value in ("hybrid", "²", "3", 3, -1, 0.5, math.inf, math.nan, True, None):
        assert predicted_class(value, SPACE) is None, value


def test_a_label_is_a_class_name_or_an_index_and_text_is_always_a_name() -> None:
    # One rule for the gateway's endpoint, the monitor's join and the retraining dataset;
    # each had its own copy.
    names = class_positions(SPACE)
    assert label_class("virginica", names, 3) == label_class(2.0, names, 3) == 2
    refused = {
        "1": "unknown class '1'; the classes are ['setosa', 'versicolor', 'virginica']",
        3: "class index 3 out of range 0..2",
        -1: "class index -1 out of range 0..2",
        0.5: "class index 0.5 is not a whole number",
        math.nan: "class index nan is not a whole number",
        True: "a class label is a class name or index, not bool",
        None: "a class label is a class name or index, not NoneType",
    }
    for value, error in refused.items():
        with pytest.raises(ClassLabelError) as raised:
            label_class(value, names, 3)
        assert str(raised.value) == error, value
    # the count of indices is the caller's: the retraining dataset takes 2 for a model whose
    # metadata names no classes
    assert label_class(1, {}, 2) == 1


def test_an_error_lists_the_first_classes_of_many() -> None:
    assert listed_classes(SPACE) == "['setosa', 'versicolor', 'virginica']"
    many = [f"c{i}" for i in range(5000)]
    listing = listed_classes(class_positions(many))
    assert listing == f"{many[:MAX_LISTED_CLASSES]} and 4,980 more"
    with pytest.raises(ClassLabelError, match=r"and 4,980 more$"):
        label_class("c5000", class_positions(many), 5000)
