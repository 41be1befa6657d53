"""Windows of live records, kept as incremental summaries (bin counts, category counts), never
as raw rows, so memory is bounded whatever the traffic.

A window is a run of consecutive panes: tumbling when the slide equals the size, sliding when
it is a fraction of it (a time window's run may have panes without records in it). Panes close
by count (a pane holds exactly ``slide`` rows: a request of several rows that crosses its end
is split between it and the next) or by event time (with allowed lateness: a pane closes once
the latest event time seen has passed its end by the lateness; a record for a pane already
closed is dropped and counted, judged per record against the records before it in the log, so
the windows do not depend on how the polls cut them).
``to_state``/``restore`` carry the panes through a snapshot, so a restarted monitor continues
exactly where the snapshot left off.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from monitors.batch import RecordBatch
from monitors.categories import count_categories
from monitors.profile import ModelProfile

__all__ = ["Pane", "Summary", "WindowSpec", "Windows", "summarize"]


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
    """Counts of one pane or window: per numeric feature on the profile's bins (+ missing, and
    how far values lie beyond the outer edges), per categorical feature by category (unknown
    ones as OTHER)."""

    rows: int = 0
    bins: dict[str, np.ndarray] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    categories: dict[str, dict[str, int]] = field(default_factory=dict)
    # per numeric feature: [sum of (first edge - x) over x below it, sum of (x - last edge) over
    # x above it], finite x only; the outer bins are open-ended, and the Wasserstein distance
    # needs how far their values went
    beyond: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, other: Summary) -> None:
        self.rows += other.rows
        for name, counts in other.bins.items():
            mine = self.bins.get(name)
            self.bins[name] = counts.copy() if mine is None else mine + counts
        for name, n in other.missing.items():
            self.missing[name] = self.missing.get(name, 0) + n
        for name, distances in other.beyond.items():
            mine = self.beyond.get(name)
            self.beyond[name] = distances.copy() if mine is None else mine + distances
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


def summarize(batch: RecordBatch, profile: ModelProfile) -> Summary:
    """The summary of a batch of records of one model version, vectorised per feature."""
    summary = Summary(rows=int(batch.rows.sum()))
    for name, ref in profile.features.items():
        column = batch.columns[name]
        values, absent = column.values, column.missing_absent()
        if not len(values):  # a pane inside a record of many rows and few values: no numpy
            if ref.kind == "numeric":
                summary.bins[name] = np.zeros(len(ref.bin_edges) - 1, dtype=np.int64)
                summary.beyond[name] = np.zeros(2)
            else:
                summary.categories[name] = {}
            summary.missing[name] = absent
        elif ref.kind == "numeric":
            present = values[~np.isnan(values)]
            edges = np.asarray(ref.bin_edges)
            index = np.searchsorted(edges[1:-1], present, side="right")
            summary.bins[name] = np.bincount(index, minlength=len(edges) - 1)
            summary.missing[name] = int(len(values) - len(present)) + absent
            summary.beyond[name] = _beyond(present, edges)
        else:
            counts, missing = count_categories(values.tolist(), ref.dtype, ref.categories)
            summary.categories[name] = counts
            summary.missing[name] = missing + absent
    return summary


def _beyond(present: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """[how far the finite values below the first edge lie below it, summed; the same above the
    last edge]."""
    low = edges[0] - present[present < edges[0]]
    high = present[present > edges[-1]] - edges[-1]
    return np.array([low[np.isfinite(low)].sum(), high[np.isfinite(high)].sum()])


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
        self._first_key: float | None = None  # time windows: the first pane closed

    def add(
        self, records: Sequence[Mapping[str, Any]], offsets: Iterable[int]
    ) -> list[tuple[list[Pane], Summary]]:
        """Take decoded records (with their offsets, in order); return every window that closed."""
        return self.add_batch(RecordBatch.from_records(self.profile, records, offsets))

    def add_batch(self, batch: RecordBatch) -> list[tuple[list[Pane], Summary]]:
        """Take a batch of records (in order); return every window that closed."""
        if self.spec.by == "count":
            return self._add_by_count(batch)
        return self._add_by_time(batch)

    def _add_by_count(self, batch: RecordBatch) -> list[tuple[list[Pane], Summary]]:
        emitted: list[tuple[list[Pane], Summary]] = []
        slide = int(self.spec.slide)
        current = self.open.get(self._count_key)
        pending_rows = current.summary.rows if current else 0
        total = np.cumsum(batch.rows)  # rows up to and including each record
        # the first record not yet in a closed pane, its rows that are, and the batch's rows
        # that are: a record of many panes is cut once per pane, never copied again for each
        start = skip = done = 0
        while start < len(batch):
            need = done + slide - pending_rows
            # the record that completes the pane: the first whose rows reach the slide
            end = start + int(np.searchsorted(total[start:], need))
            if end >= len(batch):
                break
            whole = int(batch.rows[end])
            keep = whole - int(total[end] - need)  # a request of several rows: its rest goes on
            self._extend_pane(self._count_key, batch.cut(start, skip, end, keep))
            emitted += self._close(self._count_key)
            self._count_key += 1
            start, skip = (end, keep) if keep < whole else (end + 1, 0)
            done, pending_rows = need, 0
        if start < len(batch):
            last = len(batch) - 1
            self._extend_pane(self._count_key, batch.cut(start, skip, last, int(batch.rows[last])))
        return emitted

    def _add_by_time(self, batch: RecordBatch) -> list[tuple[list[Pane], Summary]]:
        slide = self.spec.slide
        if len(batch):
            # The watermark each record meets is the one the records before it in the log made,
            # not the batch's: a record is late, or not, whatever the poll it came in.
            marks = np.maximum.accumulate(batch.times - self.spec.lateness_s)
            met = np.maximum(self.watermark, np.concatenate([[-np.inf], marks[:-1]]))
            late = (np.floor(batch.times / slide) + 1) * slide <= met
            if late.any():  # their panes have closed already
                self.late_rows += int(batch.rows[late].sum())
                batch = batch.take(np.flatnonzero(~late))
            self.watermark = max(self.watermark, float(marks[-1]))
        keys, which = np.unique(np.floor(batch.times / slide), return_inverse=True)
        for index, key in enumerate(keys.tolist()):
            self._extend_pane(key, batch.take(np.flatnonzero(which == index)))
        emitted: list[tuple[list[Pane], Summary]] = []
        for key in sorted(self.open):
            if (key + 1) * slide <= self.watermark:
                emitted += self._close(key)
        return emitted

    def _extend_pane(self, key: float, batch: RecordBatch) -> None:
        if not len(batch):
            return
        summary = summarize(batch, self.profile)
        first, last = int(batch.offsets[0]), int(batch.offsets[-1])
        start_time, end_time = float(batch.times.min()), float(batch.times.max())
        pane = self.open.get(key)
        if pane is None:
            self.open[key] = Pane(key, summary, first, last, start_time, end_time)
        else:
            pane.summary.add(summary)
            pane.first_offset = min(pane.first_offset, first)
            pane.last_offset = max(pane.last_offset, last)
            pane.start_time = min(pane.start_time, start_time)
            pane.end_time = max(pane.end_time, end_time)

    def _close(self, key: float) -> list[tuple[list[Pane], Summary]]:
        pane = self.open.pop(key)
        self.closed.append(pane)
        if self.spec.by == "time":
            # The window is the last ``panes`` slides, whichever of them had records: a slide
            # without any leaves the others in it. Once the monitor has seen all of its span.
            while self.closed[0].key <= pane.key - self.spec.panes:
                self.closed.popleft()
            if self._first_key is None:
                self._first_key = pane.key
            if pane.key - self._first_key + 1 < self.spec.panes:
                return []
        elif len(self.closed) < self.spec.panes:
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
            "first_key": self._first_key,
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
        # a state saved before it was kept: its closed panes were consecutive from the first
        first = state.get("first_key", windows.closed[0].key if windows.closed else None)
        windows._first_key = None if first is None else float(first)
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
        "beyond": {name: distances.tolist() for name, distances in summary.beyond.items()},
    }


def _pane_from(state: dict[str, Any]) -> Pane:
    summary = Summary(
        rows=int(state["rows"]),
        bins={n: np.asarray(c, dtype=np.int64) for n, c in state["bins"].items()},
        missing={n: int(c) for n, c in state["missing"].items()},
        categories={n: dict(c) for n, c in state["categories"].items()},
        # absent from a pane saved before it was kept: as if nothing lay beyond the edges
        beyond={n: np.asarray(d, dtype=np.float64) for n, d in state.get("beyond", {}).items()},
    )
    return Pane(
        float(state["key"]),
        summary,
        int(state["first_offset"]),
        int(state["last_offset"]),
        float(state["start_time"]),
        float(state["end_time"]),
    )
