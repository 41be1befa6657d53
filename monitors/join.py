"""The join of labels to logged predictions: a compact on-disk store per partition (sqlite3).

Each served prediction row is kept in its compact form, keyed by (request id, row): its stream
(model, version, variant), event time, predicted value and, for classifiers, the class
probabilities as float32 bytes. A label that finds its row fills it in (once: a second label
for the same row is a duplicate, counted and dropped); a label that finds no row waits in
``pending`` (its prediction may not have been read yet) and is joined when the prediction
comes, or counted ``unknown`` after ``label_wait_s``. Predictions older than the horizon are
deleted, their keys kept (``expired``, for as long again) so that a label that comes for one
later is counted ``expired`` at once rather than waiting to be counted unknown; a label whose
own time is older than the horizon is counted ``too_old`` at once. Running totals
per stream (the confusion matrix, or the sums of absolute and squared errors) are updated as
rows are joined.

The store knows how far each model's windows have been judged (``mark_judged``: every window of
its window column, prediction or label time, before a time): a label joined to a row whose
window was already judged counts in the running totals and in no window, and is counted
``after_window`` too, per stream and in all, so an operator sees labels missing their windows
(a ``settle_s`` too short) rather than a low label coverage alone.

A stream's variant is the log record's text, so a model's variants are bounded as its metric
labels are (``monitors.labels``): at most ``MAX_VARIANTS_PER_MODEL`` variants of a model at a
time keep streams of their own (one that sent nothing for a day gives its place to a new one;
after a reopen those with streams count as just used); the rows of every other or overlong one
are joined and counted under one ``OTHER`` (``"__other__"``) stream per version.

A classifier's predicted classes, probabilities and labels are stored in its model's class space
(``monitors.class_space``), whose class names the store keeps too: fixed when first needed, so
every stored index keeps its meaning.

The store also keeps the consumer's offsets and the evaluation state, written in the same
transaction as the rows: the monitor commits its Kafka offsets only after that transaction, and
on taking a partition on it resumes from the offsets in the store, so after a crash or a
rebalance no record is lost or counted twice.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from monitors.labels import LabelValues

__all__ = ["MAX_VARIANTS_PER_MODEL", "JoinCounts", "JoinStore", "Stream"]

# Variant names come from the log records, not from the registry: this many per model at a time
# have streams (and metric labels) of their own, the rest share one. A gateway route has at most
# 16 variants and 8 shadows; the rest is room for a rollout's new names while the old ones idle.
MAX_VARIANTS_PER_MODEL = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL,
    classes INTEGER NOT NULL, UNIQUE (model, version, variant));
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL, row INTEGER NOT NULL, stream INTEGER NOT NULL, time REAL NOT NULL,
    pred REAL NOT NULL, probs BLOB, label REAL, label_time REAL,
    PRIMARY KEY (request_id, row)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (stream, time);
CREATE TABLE IF NOT EXISTS pending (
    request_id TEXT NOT NULL, row INTEGER NOT NULL, label REAL NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (request_id, row)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS expired (
    request_id TEXT NOT NULL, row INTEGER NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (request_id, row)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS expired_by_time ON expired (time);
CREATE TABLE IF NOT EXISTS confusion (
    stream INTEGER NOT NULL, label INTEGER NOT NULL, pred INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (stream, label, pred)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS errors (
    stream INTEGER PRIMARY KEY, count INTEGER NOT NULL, abs_sum REAL NOT NULL,
    sq_sum REAL NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS incoming (
    request_id TEXT NOT NULL, row INTEGER NOT NULL, label REAL NOT NULL, time REAL NOT NULL);
"""

_COUNTERS = (
    "predictions",
    "duplicate_predictions",
    "labels_joined",
    "duplicate_labels",
    "labels_pending",
    "labels_unknown",
    "labels_expired",
    "labels_too_old",
    "labels_after_window",
    "predictions_expired",
)


@dataclass(frozen=True, slots=True)
class Stream:
    """A model version served under a variant; ``classes`` is 0 for a regressor."""

    id: int
    model: str
    version: str
    variant: str
    classes: int


@dataclass(slots=True)
class JoinCounts:
    """What one call did, by outcome (added to the store's counters)."""

    predictions: int = 0
    duplicate_predictions: int = 0
    labels_joined: int = 0
    duplicate_labels: int = 0
    labels_pending: int = 0
    labels_unknown: int = 0  # no prediction came for them within label_wait_s
    labels_expired: int = 0  # their prediction was there, and dropped after the horizon
    labels_too_old: int = 0  # their own time is older than any prediction the store keeps
    # of labels_joined: their row's window was judged before they were joined (in no window)
    labels_after_window: int = 0
    predictions_expired: int = 0


class JoinStore:
    """One partition's join state in ``path`` (an sqlite3 database), its windows over
    ``window_by`` time (of the prediction or of the label). Not thread-safe."""

    def __init__(
        self, path: Path, window_by: Literal["prediction", "label"] = "prediction"
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.window_by = window_by
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL: a transaction is on disk when COMMIT returns, and a crash mid-way rolls it back
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # labels come in any order: a page cache that holds the working set of the key's
        # B-tree saves a read from the OS per label (64 MiB; the default is 2 MiB)
        self._db.execute("PRAGMA cache_size=-65536")
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.executescript(_SCHEMA)
        self._streams: dict[tuple[str, str, str], Stream] = {}
        self._variants: dict[str, LabelValues] = {}  # model -> its variants with streams
        streams = self._db.execute("SELECT * FROM streams ORDER BY id DESC").fetchall()
        for sid, model, version, variant, classes in streams:
            # the newest streams' variants take the places first: a new version makes streams
            # for the variants serving it, so those are the ones in use
            self._variant(model, variant)
            self._streams[(model, version, variant)] = Stream(sid, model, version, variant, classes)
        self._streams = dict(reversed(self._streams.items()))  # oldest first, as made
        self._classes: dict[str, list[str]] = self.get("classes", {})
        self._judged: dict[str, float] = self.get("judged", {})
        self._db.execute("BEGIN")

    def close(self) -> None:
        """Roll back what was not committed, and close."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._db.close()

    # -- transactions ---------------------------------------------------------------------------

    def commit(self, offsets: dict[str, int], counts: JoinCounts) -> None:
        """Make everything since the last commit durable, with the offsets it goes with."""
        self._put("offsets", {**self.offsets(), **offsets})
        totals = self.counters()
        for name in _COUNTERS:
            totals[name] = totals.get(name, 0) + getattr(counts, name)
        self._put("counters", totals)
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")

    def offsets(self) -> dict[str, int]:
        """The next offset to read per topic, as of the last commit."""
        value: dict[str, int] = self.get("offsets", {})
        return value

    def counters(self) -> dict[str, int]:
        value: dict[str, int] = self.get("counters", {})
        return value

    def get(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else orjson.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        """Keep a JSON value with the state (committed with the next ``commit``)."""
        self._put(key, value)

    def _put(self, key: str, value: Any) -> None:
        blob = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
        self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, blob))

    # -- streams ------------------------------------------------------------------------------

    def stream(self, model: str, version: str, variant: str, classes: int) -> Stream:
        """The stream a record of the version served under ``variant`` is joined in: the
        variant's own, or the version's ``OTHER`` stream past ``MAX_VARIANTS_PER_MODEL``."""
        variant = self._variant(model, variant)
        key = (model, version, variant)
        stream = self._streams.get(key)
        if stream is None:
            cursor = self._db.execute(
                "INSERT INTO streams (model, version, variant, classes) VALUES (?, ?, ?, ?)",
                (model, version, variant, classes),
            )
            assert cursor.lastrowid is not None
            stream = self._streams[key] = Stream(cursor.lastrowid, model, version, variant, classes)
        return stream

    @property
    def streams(self) -> list[Stream]:
        return list(self._streams.values())

    # -- class spaces -------------------------------------------------------------------------

    def classes(self, model: str) -> list[str] | None:
        """The class names the model's stored classes index (``monitors.class_space``); None
        until fixed."""
        return self._classes.get(model)

    def fix_classes(self, model: str, names: list[str]) -> list[str]:
        """Fix the model's class space to ``names`` unless it is fixed (committed with the next
        ``commit``); returns the model's class space."""
        if model not in self._classes:
            self._classes[model] = list(names)
            self._put("classes", self._classes)
        return self._classes[model]

    def _variant(self, model: str, variant: str) -> str:
        values = self._variants.get(model)
        if values is None:
            values = self._variants[model] = LabelValues(MAX_VARIANTS_PER_MODEL)
        return values(variant)

    # -- judged windows -----------------------------------------------------------------------

    def mark_judged(self, model: str, before: float) -> None:
        """Every window of the model before ``before`` (``window_by`` time) is judged: a label
        joined to a row of one from now on is counted ``labels_after_window`` (committed with the
        next ``commit``, as the judgements are)."""
        if self._judged.get(model) != before:
            self._judged[model] = before
            self._put("judged", self._judged)

    def judged_before(self, model: str) -> float | None:
        """The time before which the model's windows are judged; None while none is."""
        return self._judged.get(model)

    def after_window(self, stream: Stream) -> int:
        """Labels joined to the stream's rows after their window was judged, so far."""
        return self._after_window().get(str(stream.id), 0)

    def _after_window(self) -> dict[str, int]:
        value: dict[str, int] = self.get("after_window", {})
        return value

    def _count_after_window(self, joined: list[tuple[int, float]]) -> int:
        """Count the joined (stream, window time) rows whose window was judged, per stream."""
        if not self._judged or not joined:
            return 0
        before = {s.id: self._judged.get(s.model, -math.inf) for s in self._streams.values()}
        late: dict[str, int] = {}
        for sid, time in joined:
            if time < before[sid]:
                late[str(sid)] = late.get(str(sid), 0) + 1
        if late:
            counts = self._after_window()
            for sid_text, n in late.items():
                counts[sid_text] = counts.get(sid_text, 0) + n
            self._put("after_window", counts)
        return sum(late.values())

    # -- the join -----------------------------------------------------------------------------

    def add_predictions(
        self, rows: Sequence[tuple[str, int, int, float, float, bytes | None]]
    ) -> JoinCounts:
        """Store (request id, row, stream, time, predicted value, probabilities) rows; join the
        pending labels they were waiting for."""
        db = self._db
        by_stream: dict[int, list[tuple[str, int, int, float, float, bytes | None]]] = {}
        for row in rows:
            by_stream.setdefault(row[2], []).append(row)
        predicted = self._predicted()
        counts = JoinCounts()
        for sid, group in by_stream.items():
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO predictions VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)", group
            )
            stored = db.total_changes - before
            predicted[str(sid)] = predicted.get(str(sid), 0) + stored
            counts.predictions += stored
            counts.duplicate_predictions += len(group) - stored
        self._put("predicted", predicted)
        if counts.predictions and db.execute("SELECT 1 FROM pending LIMIT 1").fetchone():
            counts.labels_joined, counts.labels_after_window = self._join_pending()
        return counts

    def _predicted(self) -> dict[str, int]:
        value: dict[str, int] = self.get("predicted", {})
        return value

    def add_labels(
        self, rows: Iterable[tuple[str, int, float, float]], before: float = -math.inf
    ) -> JoinCounts:
        """Join (request id, row, label, time) labels to their predictions, or keep them pending;
        count those whose time is before ``before`` (the horizon: older than any prediction the
        store keeps) as too old, and neither join nor keep them.

        One pass over the predictions' key for the batch (a join with the batch in a temporary
        table), then an update by key of the rows that get their label.
        """
        db = self._db
        unique: dict[tuple[str, int], tuple[str, int, float, float]] = {}
        given = too_old = 0
        for label in rows:  # the first label of a (request, row) in the batch counts
            # A prediction comes before its outcome, so a label older than every prediction kept
            # has lost its prediction, or gives a wrong time (another unit, a default of 0).
            # Joined, it would land in a window of label time judged long ago (in the totals, in
            # no window); pending, it would count as unknown at once, never having waited.
            if label[3] < before:
                too_old += 1
                continue
            unique.setdefault((label[0], label[1]), label)
            given += 1
        # in key order: the lookups and updates then walk the predictions' B-tree in order
        db.executemany("INSERT INTO incoming VALUES (?, ?, ?, ?)", sorted(unique.values()))
        counts = JoinCounts(duplicate_labels=given - len(unique), labels_too_old=too_old)
        found = db.execute(
            "SELECT i.request_id, i.row, i.label, i.time, p.stream, p.pred, p.label IS NOT NULL, "
            "p.time FROM incoming i LEFT JOIN predictions p "
            "ON p.request_id = i.request_id AND p.row = i.row"
        ).fetchall()
        gone: set[tuple[str, int]] = set()
        if any(f[4] is None for f in found):  # only misses look among the expired keys
            gone = set(
                db.execute(
                    "SELECT i.request_id, i.row FROM incoming i JOIN expired e "
                    "ON e.request_id = i.request_id AND e.row = i.row"
                ).fetchall()
            )
        db.execute("DELETE FROM incoming")
        by_label = self.window_by == "label"
        updates, joined, waiting, windows = [], [], [], []
        for request_id, row, label, time, stream, pred, labelled, predicted_at in found:
            if stream is None and (request_id, row) in gone:
                counts.labels_expired += 1
            elif stream is None:
                waiting.append((request_id, row, label, time))
            elif labelled:
                counts.duplicate_labels += 1
            else:
                updates.append((label, time, request_id, row))
                joined.append((stream, label, pred))
                windows.append((stream, time if by_label else predicted_at))
        db.executemany(
            "UPDATE predictions SET label = ?, label_time = ? WHERE request_id = ? AND row = ?",
            updates,
        )
        self._add_totals(joined)
        counts.labels_joined = len(joined)
        counts.labels_after_window = self._count_after_window(windows)
        before = db.total_changes
        db.executemany("INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?)", waiting)
        counts.labels_pending = db.total_changes - before
        counts.duplicate_labels += len(waiting) - counts.labels_pending  # already pending
        return counts

    def _join_pending(self) -> tuple[int, int]:
        """Fill in the labels that waited for the predictions just stored; (labels joined, of
        them after their window)."""
        db = self._db
        found = db.execute(
            "SELECT p.stream, s.label, p.pred, p.time, s.time FROM pending s JOIN predictions p "
            "ON p.request_id = s.request_id AND p.row = s.row WHERE p.label IS NULL"
        ).fetchall()
        column = 4 if self.window_by == "label" else 3
        joined = [(f[0], f[1], f[2]) for f in found]
        after_window = self._count_after_window([(f[0], f[column]) for f in found])
        if joined:
            db.execute(
                "UPDATE predictions SET label = s.label, label_time = s.time FROM pending s "
                "WHERE predictions.request_id = s.request_id AND predictions.row = s.row "
                "AND predictions.label IS NULL"
            )
            self._add_totals(joined)
        db.execute(
            "DELETE FROM pending WHERE EXISTS (SELECT 1 FROM predictions p WHERE "
            "p.request_id = pending.request_id AND p.row = pending.row)"
        )
        return len(joined), after_window

    def _add_totals(self, joined: list[tuple[int, float, float]]) -> None:
        """Add joined (stream, label, predicted) rows to the streams' running totals."""
        if not joined:
            return
        db = self._db
        table = np.asarray(joined, dtype=np.float64)
        by_id = {s.id: s for s in self._streams.values()}
        for sid in np.unique(table[:, 0]):
            mine = table[table[:, 0] == sid]
            stream = by_id[int(sid)]
            if stream.classes:
                k = stream.classes
                truth, predicted = mine[:, 1], mine[:, 2]
                valid = (truth >= 0) & (truth < k) & (predicted >= 0) & (predicted < k)
                codes = (truth[valid] * k + predicted[valid]).astype(np.int64)
                cells = np.bincount(codes, minlength=k * k)
                db.executemany(
                    "INSERT INTO confusion VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                    "count = count + excluded.count",
                    [(stream.id, int(c // k), int(c % k), int(cells[c]))
                     for c in np.flatnonzero(cells)],
                )  # fmt: skip
            else:
                errors = mine[:, 2] - mine[:, 1]
                db.execute(
                    "INSERT INTO errors VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                    "count = count + excluded.count, abs_sum = abs_sum + excluded.abs_sum, "
                    "sq_sum = sq_sum + excluded.sq_sum",
                    (stream.id, len(mine), float(np.abs(errors).sum()), float((errors**2).sum())),
                )

    def expire(
        self, before: float, labels_before: float, forget_before: float | None = None
    ) -> JoinCounts:
        """Drop predictions older than ``before`` (their keys kept until ``forget_before``,
        prediction time), and count the labels that waited since before ``labels_before`` for a
        prediction that never came as unknown."""
        db = self._db
        counts = JoinCounts()
        for stream in self._streams.values():
            db.execute(
                "INSERT OR IGNORE INTO expired SELECT request_id, row, time FROM predictions "
                "WHERE stream = ? AND time < ?",
                (stream.id, before),
            )
            cursor = db.execute(
                "DELETE FROM predictions WHERE stream = ? AND time < ?", (stream.id, before)
            )
            counts.predictions_expired += cursor.rowcount
        if forget_before is not None:
            db.execute("DELETE FROM expired WHERE time < ?", (forget_before,))
        cursor = db.execute("DELETE FROM pending WHERE time < ?", (labels_before,))
        counts.labels_unknown = cursor.rowcount
        return counts

    # -- reading ------------------------------------------------------------------------------

    def window(
        self, stream: Stream, by: str, start: float, end: float
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """(rows predicted, predicted values, labels, probabilities, all rows' probabilities) of
        a window of prediction time (``by="prediction"``) or of label time; the labelled rows'
        arrays come first, the probabilities of every predicted row last (the estimate's input)."""
        column = "time" if by == "prediction" else "label_time"
        rows = self._db.execute(
            f"SELECT pred, label, probs FROM predictions WHERE stream = ? AND {column} >= ? "
            f"AND {column} < ?",
            (stream.id, start, end),
        ).fetchall()
        labelled = [r for r in rows if r[1] is not None]
        pred = np.fromiter((r[0] for r in labelled), np.float64, len(labelled))
        label = np.fromiter((r[1] for r in labelled), np.float64, len(labelled))
        probs = all_probs = None
        if stream.classes:
            probs = _matrix([r[2] for r in labelled], stream.classes)
            all_probs = _matrix([r[2] for r in rows], stream.classes)
        return (
            len(rows),
            pred,
            label,
            probs,
            all_probs if all_probs is not None else np.zeros((0, 0)),
        )

    def first_time(self, stream: Stream, by: str, after: float) -> float | None:
        """The earliest prediction (or label) time of a stream at or after ``after``."""
        column = "time" if by == "prediction" else "label_time"
        (value,) = self._db.execute(
            f"SELECT min({column}) FROM predictions WHERE stream = ? AND {column} >= ?",
            (stream.id, after),
        ).fetchone()
        return None if value is None else float(value)

    def totals(self, stream: Stream) -> dict[str, Any]:
        """Every label joined to the stream so far: the confusion matrix, or error sums."""
        if stream.classes:
            confusion = np.zeros((stream.classes, stream.classes), dtype=np.int64)
            for label, pred, count in self._db.execute(
                "SELECT label, pred, count FROM confusion WHERE stream = ?", (stream.id,)
            ):
                if 0 <= label < stream.classes and 0 <= pred < stream.classes:
                    confusion[label, pred] += count
            return {"confusion": confusion}
        row = self._db.execute(
            "SELECT count, abs_sum, sq_sum FROM errors WHERE stream = ?", (stream.id,)
        ).fetchone()
        count, abs_sum, sq_sum = row if row is not None else (0, 0.0, 0.0)
        return {"count": count, "abs_sum": abs_sum, "sq_sum": sq_sum}

    def predicted(self, stream: Stream) -> int:
        """Prediction rows stored for a stream so far (duplicates once)."""
        return self._predicted().get(str(stream.id), 0)


def _matrix(blobs: list[bytes | None], classes: int) -> np.ndarray:
    """The probabilities of rows as a (rows, classes) matrix; NaN when a row has none."""
    present = [b for b in blobs if b is not None]
    if len(present) < len(blobs):
        return np.full((len(blobs), classes), np.nan)
    matrix = np.frombuffer(b"".join(present), dtype=np.float32).reshape(len(blobs), classes)
    return matrix.astype(np.float64)
