"""Windows of live records, kept as incremental summaries (bin counts, category counts), never
as raw rows, so memory is bounded whatever the traffic.

A window is a run of consecutive panes: tumbling when the slide equals the size, sliding when
it is a fraction of it. Panes close by count (rows) or by event time (with allowed lateness:
a pane closes once the latest event time seen has passed its end by the lateness; a record for
a pane already closed is dropped and counted). ``to_state``/``restore`` carry the panes through
a snapshot, so a restarted monitor continues exactly where the snapshot left off.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any, Literal

import numpy as np

from monitors.profile import OTHER, ModelProfile

__all__ = ["Pane", "Summary", "WindowSpec", "Windows", "column"]


@dataclass(frozen=True)
class WindowSpec:
    """Window size and slide, in rows (``count``) or seconds (``time``)."""

    by: Literal["count", "time"] = "count"
    size: float = 5000
    slide: float = 5000
    lateness_s: float = 0.0

    @property
    def panes(self) -> int:
        return max(1, round(self.size / self.slide))


@dataclass
class Summary:
    """Counts of one pane or window: per numeric feature on the profile's bins (+ missing),
    per categorical feature by category (unknown ones as OTHER)."""

    rows: int = 0
    bins: dict[str, np.ndarray] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    categories: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, other: Summary) -> None:
        self.rows += other.rows
        for name, counts in other.bins.items():
            mine = self.bins.get(name)
            self.bins[name] = counts.copy() if mine is None else mine + counts
        for name, n in other.missing.items():
            self.missing[name] = self.missing.get(name, 0) + n
        for name, cats in other.categories.items():
            target = self.categories.setdefault(name, {})
            for cat, n in cats.items():
                target[cat] = target.get(cat, 0) + n


@dataclass
class Pane:
    """A pane's summary, where it starts (offset, event time) and its key."""

    key: float
    summary: Summary
    first_offset: int
    last_offset: int
    start_time: float
    end_time: float


def column(records: list[dict[str, Any]], name: str) -> np.ndarray:
    """One feature's values across records, as floats (missing values as NaN)."""
    values = list(chain.from_iterable(r["features"].get(name, [None] * r["rows"]) for r in records))
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray(values, dtype=object).astype(np.float64)


def _matrix(records: list[dict[str, Any]], rows: int) -> dict[str, np.ndarray]:
    """Every numeric feature's column in one pass, when all records are single-row and carry
    the same features (as one gateway writes them); else empty."""
    if rows != len(records):
        return {}
    keys = list(records[0]["features"])
    pick = itemgetter(*keys)  # each record's value lists in this order, whatever its own
    try:
        picked = map(pick, (r["features"] for r in records))
        values = chain.from_iterable(chain.from_iterable(picked))
        flat = np.fromiter(values, dtype=np.float64, count=rows * len(keys))
    except (KeyError, TypeError, ValueError):  # a feature missing, None, text, several values
        return {}
    matrix = flat.reshape(rows, len(keys))
    return {key: matrix[:, j] for j, key in enumerate(keys)}


def summarize(records: list[dict[str, Any]], profile: ModelProfile) -> Summary:
    """The summary of a batch of records of one model version, vectorised per feature."""
    summary = Summary(rows=sum(r["rows"] for r in records))
    matrix = _matrix(records, summary.rows) if records else {}
    for name, ref in profile.features.items():
        if name.startswith("prediction:"):
            output = name.removeprefix("prediction:")
            values = list(
                chain.from_iterable(r.get("outputs", {}).get(output, []) for r in records)
            )
        else:
            values = None
        if ref.kind == "numeric":
            if values is not None:
                array = np.asarray(values, dtype=np.float64)
            elif name in matrix:
                array = matrix[name]
            else:
                array = column(records, name)
            present = array[~np.isnan(array)]
            edges = np.asarray(ref.bin_edges)
            index = np.searchsorted(edges[1:-1], present, side="right")
            summary.bins[name] = np.bincount(index, minlength=len(edges) - 1)
            summary.missing[name] = int(len(array) - len(present))
        else:
            raw = values if values is not None else list(
                chain.from_iterable(r["features"].get(name, []) for r in records)
            )  # fmt: skip
            labels, counts = np.unique(np.asarray([str(v) for v in raw]), return_counts=True)
            known = ref.categories
            cats: dict[str, int] = {}
            for label, n in zip(labels.tolist(), counts.tolist(), strict=True):
                key = label if label in known else OTHER
                cats[key] = cats.get(key, 0) + n
            summary.categories[name] = cats
    return summary


class Windows:
    """The panes of one model version in one partition; ``add`` returns windows that closed."""

    def __init__(self, spec: WindowSpec, profile: ModelProfile) -> None:
        self.spec = spec
        self.profile = profile
        self.closed: deque[Pane] = deque(maxlen=spec.panes)
        self.open: dict[float, Pane] = {}
        self.watermark = float("-inf")
        self.late_rows = 0
        self._count_key = 0.0

    def add(
        self, records: list[dict[str, Any]], offsets: list[int]
    ) -> list[tuple[list[Pane], Summary]]:
        """Take records (with their offsets, in order); return every window that closed."""
        if self.spec.by == "count":
            return self._add_by_count(records, offsets)
        return self._add_by_time(records, offsets)

    def _add_by_count(
        self, records: list[dict[str, Any]], offsets: list[int]
    ) -> list[tuple[list[Pane], Summary]]:
        emitted: list[tuple[list[Pane], Summary]] = []
        start = 0
        slide = int(self.spec.slide)
        current = self.open.get(self._count_key)
        pending_rows = current.summary.rows if current else 0
        for i, record in enumerate(records):
            pending_rows += record["rows"]
            if pending_rows >= slide:  # this record completes the pane
                self._extend_pane(self._count_key, records[start : i + 1], offsets[start : i + 1])
                emitted += self._close(self._count_key)
                self._count_key += 1
                start, pending_rows = i + 1, 0
        if start < len(records):
            self._extend_pane(self._count_key, records[start:], offsets[start:])
        return emitted

    def _add_by_time(
        self, records: list[dict[str, Any]], offsets: list[int]
    ) -> list[tuple[list[Pane], Summary]]:
        slide = self.spec.slide
        groups: dict[float, tuple[list[dict[str, Any]], list[int]]] = {}
        for record, offset in zip(records, offsets, strict=True):
            key = float(np.floor(record["time"] / slide))
            if key not in self.open and (key + 1) * slide <= self.watermark:
                self.late_rows += record["rows"]  # its pane has closed already
                continue
            batch = groups.setdefault(key, ([], []))
            batch[0].append(record)
            batch[1].append(offset)
        for key, (group, group_offsets) in sorted(groups.items()):
            self._extend_pane(key, group, group_offsets)
        if records:
            latest = max(r["time"] for r in records)
            self.watermark = max(self.watermark, latest - self.spec.lateness_s)
        emitted: list[tuple[list[Pane], Summary]] = []
        for key in sorted(self.open):
            if (key + 1) * slide <= self.watermark:
                emitted += self._close(key)
        return emitted

    def _extend_pane(self, key: float, records: list[dict[str, Any]], offsets: list[int]) -> None:
        if not records:
            return
        summary = summarize(records, self.profile)
        times = [r["time"] for r in records]
        pane = self.open.get(key)
        if pane is None:
            self.open[key] = Pane(key, summary, offsets[0], offsets[-1], min(times), max(times))
        else:
            pane.summary.add(summary)
            pane.first_offset = min(pane.first_offset, offsets[0])
            pane.last_offset = max(pane.last_offset, offsets[-1])
            pane.start_time, pane.end_time = (
                min(pane.start_time, *times),
                max(pane.end_time, *times),
            )

    def _close(self, key: float) -> list[tuple[list[Pane], Summary]]:
        pane = self.open.pop(key)
        if self.spec.by == "time" and self.closed and pane.key != self.closed[-1].key + 1:
            self.closed.clear()  # a gap in time: earlier panes cannot share a window with it
        self.closed.append(pane)
        if len(self.closed) < self.spec.panes:
            return []
        total = Summary()
        for member in self.closed:
            total.add(member.summary)
        return [(list(self.closed), total)]

    # -- snapshots ----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything ``restore`` needs to continue exactly where this left off (JSON-able)."""
        return {
            "spec": [self.spec.by, self.spec.size, self.spec.slide, self.spec.lateness_s],
            "closed": [_pane_state(p) for p in self.closed],
            "open": [_pane_state(p) for p in self.open.values()],
            "watermark": self.watermark if np.isfinite(self.watermark) else None,
            "late_rows": self.late_rows,
            "count_key": self._count_key,
        }

    @classmethod
    def restore(cls, spec: WindowSpec, profile: ModelProfile, state: dict[str, Any]) -> Windows:
        """Windows from ``to_state``; raises ValueError when the state was kept for another
        window spec (its panes would not add up to this spec's windows)."""
        if state["spec"] != [spec.by, spec.size, spec.slide, spec.lateness_s]:
            raise ValueError(f"window state for {state['spec']}, not for {spec}")
        windows = cls(spec, profile)
        windows.closed.extend(_pane_from(p) for p in state["closed"])
        windows.open = {pane.key: pane for pane in map(_pane_from, state["open"])}
        watermark = state["watermark"]
        windows.watermark = float("-inf") if watermark is None else float(watermark)
        windows.late_rows = int(state["late_rows"])
        windows._count_key = float(state["count_key"])
        return windows


def _pane_state(pane: Pane) -> dict[str, Any]:
    summary = pane.summary
    return {
        "key": pane.key,
        "first_offset": pane.first_offset,
        "last_offset": pane.last_offset,
        "start_time": pane.start_time,
        "end_time": pane.end_time,
        "rows": summary.rows,
        "bins": {name: counts.tolist() for name, counts in summary.bins.items()},
        "missing": summary.missing,
        "categories": summary.categories,
    }


def _pane_from(state: dict[str, Any]) -> Pane:
    summary = Summary(
        rows=int(state["rows"]),
        bins={n: np.asarray(c, dtype=np.int64) for n, c in state["bins"].items()},
        missing={n: int(c) for n, c in state["missing"].items()},
        categories={n: dict(c) for n, c in state["categories"].items()},
    )
    return Pane(
        float(state["key"]),
        summary,
        int(state["first_offset"]),
        int(state["last_offset"]),
        float(state["start_time"]),
        float(state["end_time"]),
    )
