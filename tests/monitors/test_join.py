from __future__ import annotations

from pathlib import Path

import numpy as np

from monitors.join import MAX_VARIANTS_PER_MODEL, JoinCounts, JoinStore
from monitors.labels import OTHER


def _probs(p: float) -> bytes:
    return np.asarray([1 - p, p], dtype=np.float32).tobytes()


def test_labels_join_either_order_and_duplicates_count_once(tmp_path: Path) -> None:
    store = JoinStore(tmp_path / "p0.sqlite")
    stream = store.stream("m", "1", "a", classes=2)
    early = store.add_labels([("r2", 0, 1.0, 10.0)])  # before its prediction
    assert early.labels_pending == 1
    counts = store.add_predictions(
        [("r1", 0, stream.id, 1.0, 1.0, _probs(0.9)), ("r1", 1, stream.id, 1.0, 0.0, _probs(0.2)),
         ("r2", 0, stream.id, 2.0, 1.0, _probs(0.8)), ("r1", 0, stream.id, 1.0, 1.0, _probs(0.9))]
    )  # fmt: skip
    assert (counts.predictions, counts.duplicate_predictions, counts.labels_joined) == (3, 1, 1)
    counts = store.add_labels(
        [("r1", 0, 1.0, 11.0), ("r1", 0, 1.0, 11.0), ("r1", 1, 1.0, 12.0), ("r2", 0, 0.0, 13.0),
         ("nope", 0, 1.0, 14.0)]
    )  # fmt: skip
    # r1/0 twice in the batch, r2/0 already labelled, nope pending
    assert (counts.labels_joined, counts.duplicate_labels, counts.labels_pending) == (2, 2, 1)
    again = store.add_labels([("nope", 0, 1.0, 15.0)])
    assert (again.duplicate_labels, again.labels_pending) == (1, 0)
    confusion = store.totals(stream)["confusion"]
    assert confusion.tolist() == [[0, 0], [1, 2]]  # true 1: predicted 0 once, 1 twice
    assert store.predicted(stream) == 3
    expired = store.expire(before=1.5, labels_before=20.0)
    assert (expired.predictions_expired, expired.labels_unknown) == (2, 1)
    predicted, pred, label, probs, _all_probs = store.window(stream, "prediction", 0.0, 10.0)
    assert predicted == 1
    assert label.tolist() == [1.0]
    assert pred.tolist() == [1.0]
    assert probs is not None
    assert np.allclose(probs, [[0.2, 0.8]])
    store.close()


def test_only_committed_state_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "p0.sqlite"
    store = JoinStore(path)
    stream = store.stream("m", "1", "a", classes=0)
    store.add_predictions([("r1", 0, stream.id, 1.0, 2.5, None)])
    store.put("watermark", 1.0)
    store.commit({"inference-log": 5}, JoinCounts(predictions=1))
    store.add_predictions([("r2", 0, stream.id, 2.0, 3.0, None)])
    store.commit({"inference-log": 6}, JoinCounts(predictions=1))
    store.add_labels([("r1", 0, 2.0, 3.0)])  # never committed: a crash before the commit
    store.put("watermark", 9.0)
    store._db.close()  # the process dies: no rollback, no commit

    reopened = JoinStore(path)
    assert reopened.offsets() == {"inference-log": 6}
    assert reopened.counters()["predictions"] == 2
    assert reopened.get("watermark") == 1.0
    (stream,) = reopened.streams
    assert reopened.totals(stream) == {"count": 0, "abs_sum": 0.0, "sq_sum": 0.0}
    counts = reopened.add_labels([("r1", 0, 2.0, 3.0)])
    assert counts.labels_joined == 1
    assert reopened.totals(stream) == {"count": 1, "abs_sum": 0.5, "sq_sum": 0.25}
    reopened.close()


def test_labels_for_expired_predictions_and_for_unknown_ids_are_counted_apart(
    tmp_path: Path,
) -> None:
    store = JoinStore(tmp_path / "p0.sqlite")
    stream = store.stream("m", "1", "a", classes=2)
    store.add_predictions([(f"r{i}", 0, stream.id, float(i), 1.0, None) for i in range(10)])
    store.add_predictions([("r9", 1, stream.id, 100.0, 1.0, None)])
    assert store.expire(before=5.0, labels_before=0.0).predictions_expired == 5
    counts = store.add_labels(
        [("r0", 0, 1.0, 50.0), ("r4", 0, 0.0, 50.0), ("r7", 0, 1.0, 50.0), ("who", 0, 1.0, 50.0)]
    )
    # r0 and r4 were served and dropped: expired at once; "who" waits for its prediction
    assert (counts.labels_expired, counts.labels_joined, counts.labels_pending) == (2, 1, 1)
    later = store.expire(before=5.0, labels_before=60.0)
    assert (later.labels_unknown, later.labels_expired) == (1, 0)
    # the expired keys are forgotten after their own horizon: a label then is unknown
    store.expire(before=5.0, labels_before=60.0, forget_before=3.0)
    forgotten = store.add_labels([("r1", 0, 1.0, 70.0), ("r3", 0, 1.0, 70.0)])
    assert (forgotten.labels_expired, forgotten.labels_pending) == (1, 1)  # r3 kept, r1 not
    store.commit({}, forgotten)
    store.close()
    reopened = JoinStore(tmp_path / "p0.sqlite")
    assert reopened.add_labels([("r2", 0, 1.0, 80.0)]).labels_pending == 1  # forgotten too
    assert reopened.add_labels([("r4", 0, 1.0, 80.0)]).labels_expired == 1  # kept, committed
    reopened.close()


def test_variants_past_the_bound_share_a_stream_before_and_after_a_reopen(tmp_path: Path) -> None:
    # a stream per variant named in the log: made-up names made streams without bound
    store = JoinStore(tmp_path / "p0.sqlite")
    made_up = [f"v{i}" for i in range(100)]
    got = [store.stream("m", "1", variant, 2).variant for variant in made_up]
    kept = made_up[:MAX_VARIANTS_PER_MODEL]
    assert got == kept + [OTHER] * (100 - len(kept))
    assert store.stream("m", "1", "x" * 1000, 2).variant == OTHER  # too long for a name
    assert store.stream("m", "2", "v3", 2).variant == "v3"  # the bound is per model
    assert store.stream("n", "1", "v99", 2).variant == "v99"
    store.commit({}, JoinCounts())
    store.close()

    reopened = JoinStore(tmp_path / "p0.sqlite")
    last, first_pooled = f"v{MAX_VARIANTS_PER_MODEL - 1}", f"v{MAX_VARIANTS_PER_MODEL}"
    assert reopened.stream("m", "2", last, 2).variant == last
    assert reopened.stream("m", "2", first_pooled, 2).variant == OTHER
    assert reopened.stream("m", "1", "new", 2).variant == OTHER
    # m/1: the kept and OTHER; m/2: v3, the last kept and OTHER; n/1: v99
    assert len(reopened.streams) == len(kept) + 1 + 3 + 1
    reopened.close()


def test_labels_joined_to_rows_of_judged_windows_are_counted_after_window(tmp_path: Path) -> None:
    store = JoinStore(tmp_path / "p0.sqlite")
    a, b = store.stream("m", "1", "a", classes=2), store.stream("n", "1", "a", classes=2)
    store.add_predictions(
        [("r1", 0, a.id, 5.0, 1.0, None), ("r2", 0, a.id, 15.0, 1.0, None),
         ("r3", 0, b.id, 5.0, 1.0, None)]
    )  # fmt: skip
    assert store.judged_before("m") is None
    store.mark_judged("m", 10.0)  # m's windows before 10 s are judged; none of n's
    counts = store.add_labels([("r1", 0, 1.0, 20.0), ("r2", 0, 1.0, 20.0), ("r3", 0, 1.0, 20.0),
                               ("r4", 0, 0.0, 20.0)])  # fmt: skip
    assert (counts.labels_joined, counts.labels_after_window, counts.labels_pending) == (3, 1, 1)
    # a label that waited for a prediction of a judged window counts when the prediction comes
    late = store.add_predictions([("r4", 0, a.id, 9.0, 1.0, None)])
    assert (late.labels_joined, late.labels_after_window) == (1, 1)
    assert (store.after_window(a), store.after_window(b)) == (2, 0)
    assert store.totals(a)["confusion"].sum() == 3  # the running totals have them all
    store.commit({}, JoinCounts(labels_after_window=2))
    store.mark_judged("m", 20.0)  # never committed
    store.close()

    reopened = JoinStore(tmp_path / "p0.sqlite")
    assert reopened.judged_before("m") == 10.0
    assert reopened.counters()["labels_after_window"] == 2
    a = reopened.streams[0]
    assert reopened.after_window(a) == 2
    reopened.add_predictions([("r5", 0, a.id, 8.0, 1.0, None)])
    assert reopened.add_labels([("r5", 0, 1.0, 30.0)]).labels_after_window == 1
    assert reopened.after_window(a) == 3
    reopened.close()


def test_windows_of_label_time_judge_a_label_by_its_own_time(tmp_path: Path) -> None:
    store = JoinStore(tmp_path / "p0.sqlite", window_by="label")
    stream = store.stream("m", "1", "a", classes=0)
    store.add_predictions(
        [("r1", 0, stream.id, 5.0, 1.0, None), ("r2", 0, stream.id, 5.0, 1.0, None)]
    )
    store.mark_judged("m", 10.0)
    counts = store.add_labels([("r1", 0, 1.0, 12.0), ("r2", 0, 1.0, 9.0)])  # r2's window: judged
    assert (counts.labels_joined, counts.labels_after_window) == (2, 1)
    store.close()
