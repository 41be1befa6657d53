"""Every evaluated window's full result, per model version, on disk beside the monitor's state:
what ``GET /windows/{model}/{version}`` and ``python -m monitors report`` read.

Layout under ``<state_dir>/history/<model>/<version>/`` (``HISTORY_DIR``):

- ``windows.jsonl``: one window a line, oldest first, numbered ``seq`` from 1 per model
  version: its id, partition, status, rows, bounds (event time), when it was evaluated, and per
  feature every detector's reading, threshold and flag (``monitors.evaluate.FeatureResult``)
  with the window's histogram (counts on the reference's bins, or per reference category then
  ``__other__``). The newest ``max_windows`` are kept: the file is cut back to them (rewritten
  atomically) once it holds twice as many.
- ``reference.json``: the reference histograms those counts stand beside.

The service adds a batch's windows and writes them before its partition snapshots; a window
evaluated again after a crash (same id) is not written twice.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from monitors._jsonl import read_entries, repair_tail
from monitors.categories import OTHER
from monitors.evaluate import window_histogram
from monitors.profile import ModelProfile
from monitors.windows import Summary

__all__ = ["HISTORY_DIR", "WindowHistory", "history_entry", "reference_histograms"]

HISTORY_DIR = "history"  # under the monitor's state_dir
_WINDOWS = "windows.jsonl"
_REFERENCE = "reference.json"


def history_entry(
    result: dict[str, Any], summary: Summary, profile: ModelProfile, partition: int
) -> dict[str, Any]:
    """The history line of one evaluated window (``WindowResult.to_dict``), with each feature's
    histogram in the window (``seq`` is given when it is written)."""
    features = [
        {**f, "histogram": window_histogram(summary, f["name"], profile.features[f["name"]])}
        for f in result["features"]
    ]
    return {**result, "features": features, "partition": partition, "evaluated_at": time.time()}


def reference_histograms(profile: ModelProfile) -> dict[str, Any]:
    """Per feature: its kind, the bins (edges) or category names, and the reference counts."""
    features: dict[str, Any] = {}
    for name, ref in profile.features.items():
        if ref.kind == "numeric":
            features[name] = {"kind": "numeric", "bin_edges": ref.bin_edges, "counts": ref.counts}
        else:
            names = [*ref.categories, *([] if OTHER in ref.categories else [OTHER])]
            counts = [ref.categories.get(n, 0) for n in names]
            features[name] = {"kind": "categorical", "categories": names, "counts": counts}
    return {"features": features}


@dataclass
class _Track:
    """What is known of one model version's file: ids kept, the last seq, its line count."""

    ids: set[str] = field(default_factory=set)
    seq: int = 0
    lines: int = 0
    reference_written: bool = False  # by this process, from the profile it uses


class WindowHistory:
    """The windows of every model version this monitor evaluated, bounded per version."""

    def __init__(self, directory: Path, max_windows: int = 1000) -> None:
        self.directory = Path(directory)
        self.max_windows = max_windows
        self._pending: list[tuple[int, dict[str, Any], ModelProfile]] = []
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._lock = threading.Lock()

    def add(self, partition: int, entry: dict[str, Any], profile: ModelProfile) -> None:
        """Hold a window's entry until the next ``flush``."""
        self._pending.append((partition, entry, profile))

    def discard(self, partitions: Collection[int]) -> None:
        """Drop the entries of partitions revoked before they were written (their next owner
        evaluates those windows again)."""
        self._pending = [p for p in self._pending if p[0] not in partitions]

    def flush(self) -> None:
        """Append the pending entries to their files (a thread may call this)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        with self._lock:
            lines: dict[tuple[str, str], list[bytes]] = {}
            for _, entry, profile in pending:
                key = (entry["model"], entry["version"])
                track = self._track(key)
                if entry["window_id"] in track.ids:
                    continue  # evaluated again after a crash: written the first time
                if not track.reference_written:
                    self._write(self._folder(*key) / _REFERENCE, reference_histograms(profile))
                    track.reference_written = True
                track.seq += 1
                track.ids.add(entry["window_id"])
                lines.setdefault(key, []).append(orjson.dumps({"seq": track.seq, **entry}))
            for key, new in lines.items():
                path = self._folder(*key) / _WINDOWS
                with path.open("ab") as fh:
                    fh.write(b"\n".join(new) + b"\n")
                track = self._tracks[key]
                track.lines += len(new)
                if track.lines > 2 * self.max_windows:
                    self._trim(key, path)

    def windows(
        self, model: str, version: str, *, limit: int | None = None, since: int | None = None
    ) -> list[dict[str, Any]]:
        """The model version's windows, oldest first: those numbered after ``since``, the
        newest ``limit`` of them."""
        with self._lock:
            entries = self._read(self._folder(model, version) / _WINDOWS)
        if since is not None:
            entries = [e for e in entries if e["seq"] > since]
        entries = entries[-self.max_windows :]
        return entries[-limit:] if limit is not None and limit > 0 else entries

    def reference(self, model: str, version: str) -> dict[str, Any] | None:
        """The reference histograms of the model version's windows, if any were written."""
        path = self._folder(model, version) / _REFERENCE
        return orjson.loads(path.read_bytes()) if path.is_file() else None

    # -- files --------------------------------------------------------------------------------

    def _folder(self, model: str, version: str) -> Path:
        return self.directory / _safe(model) / _safe(version)

    def _track(self, key: tuple[str, str]) -> _Track:
        track = self._tracks.get(key)
        if track is None:
            path = self._folder(*key) / _WINDOWS
            repair_tail(path)  # what a crash cut short is not glued to the next line
            entries = self._read(path)
            track = _Track(
                {e["window_id"] for e in entries},
                max((e["seq"] for e in entries), default=0),
                len(entries),
            )
            self._folder(*key).mkdir(parents=True, exist_ok=True)
            self._tracks[key] = track
        return track

    def _trim(self, key: tuple[str, str], path: Path) -> None:
        kept = self._read(path)[-self.max_windows :]
        self._write_bytes(path, b"".join(orjson.dumps(e) + b"\n" for e in kept))
        track = self._tracks[key]
        track.lines = len(kept)
        track.ids = {e["window_id"] for e in kept}

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        return read_entries(path, {"seq": int, "window_id": str})

    def _write(self, path: Path, doc: Any) -> None:
        self._write_bytes(path, orjson.dumps(doc))

    @staticmethod
    def _write_bytes(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def _safe(name: str) -> str:
    """A model or version name as one folder name (no separators, never '.' or '..'), shortened
    with a digest of the name past 200 characters: a name the registry allows (128 characters,
    spaces and any letter) is up to 9 times longer URL-encoded, past a file name's 255 bytes."""
    text = quote(name, safe="-_.")
    if len(text) > 200:  # '+' is always encoded, so no shorter name reads as this one
        text = f"{text[:150]}+{hashlib.sha256(name.encode()).hexdigest()[:32]}"
    return "%2E" + text[1:] if text.startswith(".") else text
