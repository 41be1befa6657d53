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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from registry_client import Calibration

__all__ = ["VersionClasses", "class_index"]


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
        in_space = _positions(space)
        in_version = _positions(version)
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


def class_index(value: Any, names: Sequence[str]) -> int | None:
    """A class name or index as an index into ``names`` (None: neither)."""
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        # ASCII digits, few enough for int(): '²' is a digit to isdigit, and int() refuses both
        digits = value.isascii() and value.isdigit() and len(value) <= 18
        return int(value) if digits and int(value) < len(names) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value == int(value) and 0 <= value < len(names) else None


def _positions(names: Sequence[str]) -> dict[str, int]:
    """Each name's first index (a list that repeats a name means its first)."""
    positions: dict[str, int] = {}
    for i, name in enumerate(names):
        positions.setdefault(name, i)
    return positions
