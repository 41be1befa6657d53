"""A model's class space: the one order of class names its predictions and labels are compared in.

A class index belongs to a model version (the order of its ``class_labels``), and two versions
of one model served side by side (A/B, canary, shadow) may list their classes differently: a
retrained classifier that gained a class, an export that orders them otherwise. The join
compares every prediction and label of a model in one space: the class names of the version
whose metadata the monitor read last when the partition's join store first needed them, then
fixed in the store (``JoinStore.fix_classes``), so what it holds keeps its meaning. A version's
predicted class, its probability columns and its calibration table are mapped into the space by
name; a label given as a class name (text: always a name) maps by name, one given as an index
(a number) is an index into the space. A predicted class the space lacks is not joined as
another class: the ground-truth service skips and counts it.

``label_class`` is the one rule of a classifier's label, for every reader: the gateway's
feedback endpoint, the monitor's join and the retraining dataset. An error that lists a model's
classes lists them through ``listed_classes``: a model may have thousands.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from registry_client import Calibration

__all__ = [
    "MAX_LISTED_CLASSES",
    "ClassLabelError",
    "VersionClasses",
    "class_positions",
    "label_class",
    "listed_classes",
    "predicted_class",
]

# An error names at most this many of a model's classes: a model with thousands made an error
# body of every one of them.
MAX_LISTED_CLASSES = 20
_NO_NAMES: Mapping[str, int] = {}


class ClassLabelError(ValueError):
    """A label that gives no class of the model's (the message says why)."""


@dataclass(frozen=True)
class VersionClasses:
    """One version's classes in its model's class space.

    ``index[i]`` is the space's index of the version's class ``i`` (-1: a class the space
    lacks); ``columns[j]`` is the version's probability column of the space's class ``j`` (-1:
    a class the version lacks, probability 0), None when the version has classes the space
    lacks (its probabilities are not a distribution over the space)."""

    size: int  # the space's classes
    index: tuple[int, ...]
    columns: tuple[int, ...] | None
    same: bool  # the version lists the space's classes in its order: nothing to map

    @classmethod
    def of(cls, version: Sequence[str], space: Sequence[str]) -> VersionClasses:
        if list(version) == list(space):
            same = tuple(range(len(space)))
            return cls(len(space), same, same, True)
        in_space = class_positions(space)
        in_version = class_positions(version)
        index = tuple(in_space.get(name, -1) for name in version)
        columns = None if -1 in index else tuple(in_version.get(name, -1) for name in space)
        return cls(len(space), index, columns, False)

    def probabilities(self, row: Sequence[float]) -> bytes | None:
        """A row of the version's class probabilities as the space's columns (float32 bytes);
        None when it has not one per class of the version, or they do not map."""
        if self.columns is None or len(row) != len(self.index):
            return None
        values = np.asarray(row, dtype=np.float32)
        if not self.same:
            columns = np.asarray(self.columns)
            values = np.where(columns >= 0, values[np.maximum(columns, 0)], np.float32(0))
        return values.tobytes()

    def calibration(self, table: Calibration | None) -> Calibration | None:
        """The version's reliability table with its classes in the space's order; None when the
        two do not hold the same classes (the estimate goes uncalibrated)."""
        if table is None or self.same:
            return table
        if self.columns is None or -1 in self.columns or len(table.rates) != len(self.index):
            return None
        return table.model_copy(
            update={
                key: [rows[c] for c in self.columns]
                for key in ("rates", "counts", "means")
                if (rows := getattr(table, key)) is not None
            }
        )


def label_class(label: object, positions: Mapping[str, int], count: int) -> int:
    """The class index a classifier's label gives; raises ClassLabelError saying why not.

    Text is a class name, looked up in ``positions`` (name -> index, ``class_positions``), always:
    ``"0"`` is the class named 0, never index 0 (a name of digits may be a class another version
    has). A whole number, not a bool, is an index below ``count``.

    >>> label_class("virginica", class_positions(["setosa", "versicolor", "virginica"]), 3)
    2
    """
    if isinstance(label, str):
        index = positions.get(label)
        if index is None:
            raise ClassLabelError(
                f"unknown class {label!r}; the classes are {listed_classes(positions)}"
            )
        return index
    if isinstance(label, bool) or not isinstance(label, int | float):
        raise ClassLabelError(f"a class label is a class name or index, not {type(label).__name__}")
    if isinstance(label, float) and not label.is_integer():  # a fraction, nan or infinity
        raise ClassLabelError(f"class index {label!r} is not a whole number")
    if not 0 <= label < count:
        raise ClassLabelError(f"class index {label!r} out of range 0..{count - 1}")
    return int(label)


def predicted_class(value: Any, names: Sequence[str]) -> int | None:
    """A version's predicted class (a value of its label output) as an index into its class
    ``names`` (None: none of them).

    A label's rule (``label_class``) but for one difference, on purpose: text of digits that
    names no class is an index. This is the model's own output, not a label from outside: a
    classifier trained on targets "0", "1", "2" answers "2" for its class 2, whatever names its
    metadata gives the classes."""
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        # ASCII digits, few enough for int(): '²' is a digit to isdigit, and int() refuses both
        if not (value.isascii() and value.isdigit() and len(value) <= 18):
            return None
        value = int(value)
    try:
        return label_class(value, _NO_NAMES, len(names))
    except ClassLabelError:
        return None


def listed_classes(names: Collection[str]) -> str:
    """Class names for an error message: all of them, or the first ``MAX_LISTED_CLASSES`` and
    how many more.

    >>> listed_classes([f"c{i}" for i in range(1000)])[-26:]
    "'c18', 'c19'] and 980 more"
    """
    shown = list(islice(names, MAX_LISTED_CLASSES))
    more = len(names) - len(shown)
    return f"{shown}" if more <= 0 else f"{shown} and {more:,} more"


def class_positions(names: Sequence[str]) -> dict[str, int]:
    """Each class name's index in ``names`` (a list that repeats a name means its first)."""
    positions: dict[str, int] = {}
    for i, name in enumerate(names):
        positions.setdefault(name, i)
    return positions
