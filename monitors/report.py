"""A model version's windows read back from the history, as a table of features by windows for
a terminal (``python -m monitors report``); ``monitors.pictures`` draws the same as a page.

Windows come from the monitor's state directory (``monitors/history.py``) or from a running
monitor's ``GET /windows/{model}/{version}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from monitors.history import HISTORY_DIR, WindowHistory

__all__ = ["Report", "ReportError", "load_report", "table"]


class ReportError(Exception):
    """No windows to report, or the monitor could not be asked; the message says which."""


@dataclass(frozen=True)
class Report:
    """A model version's windows (oldest first) and the reference they were judged against."""

    model: str
    version: str
    reference: dict[str, Any]
    windows: list[dict[str, Any]]

    @property
    def features(self) -> list[str]:
        """Every feature of the windows, in the order the monitor judges them."""
        names: dict[str, None] = {}
        for window in self.windows:
            names.update((f["name"], None) for f in window["features"])
        return list(names)

    def window(self, seq: int | None = None) -> dict[str, Any]:
        """The window numbered ``seq``; by default the latest that drifted, else the latest."""
        if seq is not None:
            for window in self.windows:
                if window["seq"] == seq:
                    return window
            raise ReportError(f"window {seq} is not among the windows reported")
        drifted = [w for w in self.windows if w["status"] == "drift"]
        return (drifted or self.windows)[-1]


def load_report(
    model: str,
    version: str,
    *,
    state_dir: Path | None = None,
    url: str | None = None,
    last: int | None = None,
) -> Report:
    """The newest ``last`` windows of a model version (all that are kept by default), from a
    monitor's state directory or from a running monitor."""
    if url is not None:
        params = {"limit": last} if last else {}
        path = f"windows/{quote(model, safe='')}/{quote(version, safe='')}"
        try:
            response = httpx.get(f"{url.rstrip('/')}/{path}", params=params)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL is not an HTTPError
            raise ReportError(f"monitor at {url} did not answer: {exc}") from exc
        if response.status_code != 200:
            raise ReportError(f"monitor at {url}: HTTP {response.status_code} {response.text}")
        try:
            doc = response.json()
            reference, windows = doc["reference"], doc["windows"]
        except (ValueError, KeyError, TypeError) as exc:  # not a monitor's answer
            raise ReportError(
                f"monitor at {url}: not a window history: {response.text[:200]!r}"
            ) from exc
    else:
        history = WindowHistory(Path(state_dir or ".") / HISTORY_DIR)
        windows = history.windows(model, version, limit=last)
        reference = history.reference(model, version) or {"features": {}}
    if not windows:
        raise ReportError(f"no window of {model}/{version} evaluated yet")
    return Report(model, version, reference, windows)


def cell(feature: dict[str, Any]) -> str:
    """A feature's reading in one window: PSI, with * when the feature drifted."""
    return f"{feature['psi']:.3f}" + ("*" if feature["drifted"] else " ")


def table(report: Report, last: int = 12) -> str:
    """Features by the newest ``last`` windows: PSI per window, * where the feature drifted."""
    windows = report.windows[-last:]
    header = [
        ("window", [str(w["seq"]) for w in windows]),
        ("ended (UTC)", [_clock(w["end_time"]) for w in windows]),
        ("rows", [str(w["rows"]) for w in windows]),
        ("status", [w["status"] for w in windows]),
    ]
    rows = []
    for name in report.features:
        cells = []
        for window in windows:
            feature = next((f for f in window["features"] if f["name"] == name), None)
            cells.append("-" if feature is None else cell(feature))
        rows.append((name, cells))
    width = max(len(name) for name, _ in header + rows)
    columns = [max(len(c[i]) for _, c in header + rows) for i in range(len(windows))]
    span = f"{_day(windows[0]['end_time'])} to {_day(windows[-1]['end_time'])}"
    lines = [
        f"{report.model}/{report.version}: the newest {len(windows)} windows ({span}, event "
        "time, UTC), oldest first.",
        "Cells: PSI; * the feature drifted (its test significant after the correction and PSI "
        "over its threshold, or more values missing or never seen).",
        "",
    ]
    for index, (name, cells) in enumerate(header + rows):
        text = "  ".join(c.rjust(w) for c, w in zip(cells, columns, strict=True))
        lines.append(f"{name.ljust(width)}  {text}".rstrip())
        if index == len(header) - 1:
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


def _day(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))
