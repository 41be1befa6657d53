"""The ground-truth consumer's exactness: a pass interrupted by crashes (before and after the
store's commit, batches read again) ends where one uninterrupted pass over the same messages
does, and the label coverage, totals and windows are those of a direct computation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from monitors import ground_truth
from monitors.batch import MAX_RECORD_ROWS
from monitors.estimate import estimate_classification
from monitors.feedback import FEEDBACK_SCHEMA, FeedbackRecord, encode_feedback
from monitors.ground_truth import GroundTruthService
from monitors.join import MAX_VARIANTS_PER_MODEL, JoinCounts, JoinStore
from monitors.labels import OTHER
from monitors.performance_metrics import PerformanceMetrics
from monitors.retrain.demo_model import validation_report
from monitors.schema import InferenceRecord, encode_records
from monitors.settings import MonitorSettings
from monitors.webhooks import Webhooks
from registry_client import LocalRegistry, ModelMetadata, ValidationReport
from tests._mlflow_server import register_in_mlflow


@dataclass
class Message:
    offset: int
    value: bytes
    timestamp: int = 0


def traffic(
    seed: int, model: str = "breast_cancer"
) -> tuple[list[list[Message]], list[list[Message]], dict[str, Any]]:
    """Three polls of prediction and label messages; what a direct computation gives."""
    rng = np.random.default_rng(seed)
    predictions: list[list[Message]] = []
    labels: list[list[Message]] = []
    truth: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
    offset = label_offset = 0
    for poll in range(3):
        messages, label_messages = [], []
        for _ in range(4):
            records: list[InferenceRecord] = []
            feedback: list[FeedbackRecord] = []
            for i in range(50):
                variant = "a" if rng.random() < 0.5 else "b"
                p1 = float(rng.uniform())
                pred = int(p1 > 0.5)
                rid = f"{offset}-{i}"
                records.append({
                    "schema_version": 2, "request_id": rid, "time": 100.0 + poll * 20 + i * 0.1,
                    "endpoint": model, "model": model,
                    "version": "1" if variant == "a" else "2", "variant": variant,
                    "role": "primary", "rows": 1, "latency_s": 0.001, "status": "ok",
                    "outputs": {"label": [pred], "probabilities": [[1 - p1, p1]]},
                })  # fmt: skip
                if rng.random() < 0.8:  # some labels never come
                    right = rng.random() < (0.9 if variant == "a" else 0.7)
                    label = pred if right else 1 - pred
                    feedback.append({"schema": FEEDBACK_SCHEMA, "model": model,
                                     "request_id": rid, "row": 0, "labels": {"label": label},
                                     "time": 100.0 + poll * 20 + 5})  # fmt: skip
                    truth[variant].append((pred, label))
            messages.append(Message(offset, encode_records(records)))
            label_messages.append(Message(label_offset, encode_feedback(feedback)))
            offset += 1
            label_offset += 1
        predictions.append(messages)
        labels.append(label_messages)
    direct = {
        v: (len(pairs), sum(p == y for p, y in pairs) / len(pairs)) for v, pairs in truth.items()
    }
    return predictions, labels, direct


def service(
    registry: Path, state_dir: Path, mlflow_url: str | None = None, **performance: Any
) -> GroundTruthService:
    settings = MonitorSettings(
        registry_root=registry,
        registry={"backend": "mlflow", "mlflow_url": mlflow_url, "cache_dir": state_dir / "cache"}
        if mlflow_url
        else {},
        state_dir=state_dir,
        performance={
            "enabled": True,
            "window": {"size_s": 10, "settle_s": 5},
            "horizon_s": 1000,
            "ab": {"min_samples": 10},
            **performance,
        },
    )
    return GroundTruthService(settings, PerformanceMetrics(CollectorRegistry()), Webhooks([]))


async def consume_all(
    gt: GroundTruthService, predictions: list[list[Message]], labels: list[list[Message]]
) -> dict[str, Any]:
    """Every poll of the traffic, in order, then ``finish``."""
    for p, lab in zip(predictions, labels, strict=True):
        await gt.consume(0, p, lab)
    return await finish(gt)


async def finish(gt: GroundTruthService) -> dict[str, Any]:
    status = gt.status()
    for partition in list(gt.stores):
        gt.close(partition)
    await gt.webhooks.aclose()
    await gt.infos.aclose()
    return status


async def test_crashes_and_batches_read_again_change_nothing(
    demo_registry: Path, tmp_path: Path
) -> None:
    predictions, labels, direct = traffic(seed=5)
    whole = service(demo_registry, tmp_path / "whole")
    expected = await consume_all(whole, predictions, labels)
    got = {s["variant"]: (s["totals"]["labels"], s["totals"]["accuracy"])
           for s in expected["streams"].values()}  # fmt: skip
    assert got == direct
    assert expected["join"]["labels_joined"] == sum(n for n, _ in direct.values())
    assert expected["ab"]["breast_cancer"]  # the windows were judged and compared

    state = tmp_path / "crashing"
    first = service(demo_registry, state)
    await first.consume(0, predictions[0], labels[0])
    await first.consume(0, predictions[1], labels[1])
    # dies after the store's commit of the second poll, before Kafka's: it comes again
    second = service(demo_registry, state)
    await second.consume(0, predictions[1], labels[1])
    store = second.stores[0]
    store.add_labels([("0-1", 0, 1.0, 999.0)])  # dies mid-batch: never committed, and its
    store.close()  # connection goes with the process (sqlite rolls the transaction back)
    third = service(demo_registry, state)
    await third.consume(0, predictions[2], labels[2])
    interrupted = await finish(third)
    assert interrupted == expected
    second.stores.clear()
    for gt in (first, second):
        await finish(gt)


async def test_labels_before_their_predictions_wait_and_join(
    demo_registry: Path, tmp_path: Path
) -> None:
    predictions, labels, direct = traffic(seed=6)
    gt = service(demo_registry, tmp_path)
    await gt.consume(0, [], [m for poll in labels for m in poll])  # every label first
    assert gt.status()["join"]["labels_pending"] == sum(n for n, _ in direct.values())
    for poll in predictions:
        await gt.consume(0, poll, [])
    status = await finish(gt)
    got = {s["variant"]: (s["totals"]["labels"], s["totals"]["accuracy"])
           for s in status["streams"].values()}  # fmt: skip
    assert got == direct


async def test_metadata_comes_through_the_configured_mlflow_registry(
    demo_registry: Path, mlflow_url: str, tmp_path: Path
) -> None:
    name = f"gt-{uuid.uuid4().hex[:8]}"
    for version in ("1", "2"):  # the demo's versions, registered as 1 and 2 of a new model
        assert (
            register_in_mlflow(mlflow_url, name, demo_registry / "breast_cancer" / version)
            == version
        )
    predictions, labels, direct = traffic(seed=7, model=name)
    empty = tmp_path / "no-local-registry"
    empty.mkdir()
    gt = service(empty, tmp_path / "state", mlflow_url)
    status = await consume_all(gt, predictions, labels)
    got = {s["variant"]: (s["totals"]["labels"], s["totals"]["accuracy"])
           for s in status["streams"].values()}  # fmt: skip
    assert got == direct
    pair = next(iter(status["ab"][name].values()))
    assert pair["metric"] == "accuracy"  # the demo metadata's validation report, read from MLflow


async def test_poison_predictions_and_labels_are_skipped_counted_and_the_rest_joined(
    demo_registry: Path, tmp_path: Path
) -> None:
    predictions, labels, _ = traffic(seed=7)
    clean = service(demo_registry, tmp_path / "clean")
    expected = await consume_all(clean, predictions, labels)

    good: dict[str, Any] = {
        "schema_version": 2, "request_id": "poison", "time": 101.0, "endpoint": "breast_cancer",
        "model": "breast_cancer", "version": "1", "variant": "a", "role": "primary", "rows": 1,
        "latency_s": 0.001, "status": "ok", "outputs": {"label": [1], "probabilities": [[0.5, 0.5]]},
    }  # fmt: skip
    changes: list[dict[str, Any]] = [
        {"time": "now"}, {"time": 1e308}, {"model": ["m"]}, {"version": 1}, {"rows": "x"},
        {"rows": 10**18},
        {"request_id": ["x"]}, {"request_id": 7}, {"variant": {"a": 1}}, {"variant": None},
        {"rows": 3},  # more rows than outputs
        {"outputs": {"label": ["²"], "probabilities": [[0.5, 0.5]]}},
        {"outputs": {"label": [1], "probabilities": [7]}},
    ]  # fmt: skip
    poison = [encode_records([cast(InferenceRecord, {**good, **change})]) for change in changes]
    bad_labels = encode_feedback(
        [{"schema": FEEDBACK_SCHEMA, "model": "breast_cancer", "request_id": "0-1", "row": 0,
          "labels": {"label": text}, "time": 105.0} for text in ("²", "9" * 5000)]
    )  # fmt: skip
    gt = service(demo_registry, tmp_path / "poisoned")
    for n, (p, lab) in enumerate(zip(predictions, labels, strict=True)):
        p = [Message(m.offset + len(poison), m.value) for m in p]  # the poison first
        lab = [Message(m.offset + 1, m.value) for m in lab]
        if n == 0:
            p = [Message(k, value) for k, value in enumerate(poison)] + p
            lab = [Message(0, bad_labels), *lab]
        await gt.consume(0, p, lab)
    skipped = {s.labels["reason"]: s.value for m in gt.metrics.skipped.collect()
               for s in m.samples if s.name.endswith("_total")}  # fmt: skip
    got = await finish(gt)
    assert got["streams"] == expected["streams"]
    assert skipped.get("malformed") == len(changes) - 1  # the '²' label is a class no model has
    assert skipped.get("no_usable_label", 0) >= 2


async def test_made_up_variants_past_the_bound_are_joined_under_one_stream(
    demo_registry: Path, tmp_path: Path
) -> None:
    # Each variant named in a log record made a stream of its own in the join store, and the
    # A/B comparison paired every one with every other: 100 made-up variants made 100 streams
    # and 4,950 pairs per window.
    def poll(variants: list[str], time: float, first: int) -> tuple[list[Message], list[Message]]:
        records: list[InferenceRecord] = []
        feedback: list[FeedbackRecord] = []
        for n, variant in enumerate(variants):
            for i in range(5):
                rid = f"{variant}-{time}-{i}"
                records.append({
                    "schema_version": 2, "request_id": rid, "time": time + n * 0.01,
                    "endpoint": "breast_cancer", "model": "breast_cancer", "version": "1",
                    "variant": variant, "role": "primary", "rows": 1, "latency_s": 0.001,
                    "status": "ok", "outputs": {"label": [1], "probabilities": [[0.2, 0.8]]},
                })  # fmt: skip
                feedback.append({"schema": FEEDBACK_SCHEMA, "model": "breast_cancer",
                                 "request_id": rid, "row": 0, "labels": {"label": i % 2},
                                 "time": time + 1})  # fmt: skip
        return [Message(first, encode_records(records))], [
            Message(first, encode_feedback(feedback))
        ]

    made_up = [f"v{i}" for i in range(100)]
    gt = service(demo_registry, tmp_path)
    await gt.consume(0, *poll(made_up, 101.0, 0))
    await gt.consume(0, *poll(["v0"], 130.0, 1))  # moves both clocks past the first window
    status = gt.status()

    kept = made_up[:MAX_VARIANTS_PER_MODEL]
    streams = status["streams"]
    assert set(streams) == {f"breast_cancer/1/{v}" for v in [*kept, OTHER]}
    # every row of the made-up variants past the bound is joined and counted, in one stream
    assert status["join"]["predictions"] == status["join"]["labels_joined"] == 505
    other = streams[f"breast_cancer/1/{OTHER}"]
    assert other["predictions"] == other["totals"]["labels"] == 5 * (100 - len(kept))
    assert other["latest_window"]["labels"] == 5 * (100 - len(kept))  # judged too
    # the A/B comparison pairs the named variants only
    pairs = status["ab"]["breast_cancer"]
    assert len(pairs) == len(kept) * (len(kept) - 1) // 2
    assert {p[side]["variant"] for p in pairs.values() for side in "ab"} == set(kept)

    # the same variants keep their streams after a restart; a new one is past the bound too
    await finish(gt)
    again = service(demo_registry, tmp_path)
    await again.consume(0, *poll(["v3", "v50", "new"], 140.0, 2))
    status = await finish(again)
    assert set(status["streams"]) == set(streams)
    assert status["streams"][f"breast_cancer/1/{OTHER}"]["predictions"] == other["predictions"] + 10
    assert status["streams"]["breast_cancer/1/v3"]["predictions"] == 10


async def test_a_label_row_past_any_record_is_skipped_and_the_consumer_goes_on(
    demo_registry: Path, tmp_path: Path
) -> None:
    # A row of 2**63 or more (valid JSON: orjson reads integers up to 2**64 - 1) reached the
    # sqlite join store, which cannot hold it: OverflowError stopped the consumer before its
    # commit, so it read the same message again after every restart.
    predictions, labels, _ = traffic(seed=8)
    clean = service(demo_registry, tmp_path / "clean")
    expected = await consume_all(clean, predictions, labels)

    poison = b"\n".join(
        orjson.dumps({"schema": FEEDBACK_SCHEMA, "model": "breast_cancer", "request_id": "0-1",
                      "row": row, "labels": {"label": 1}, "time": 105.0})
        for row in (2**63, 2**64 - 1, MAX_RECORD_ROWS)
    )  # fmt: skip
    state = tmp_path / "poisoned"
    gt = service(demo_registry, state)
    shifted = [[Message(m.offset + 1, m.value) for m in poll] for poll in labels]
    await gt.consume(0, predictions[0], [Message(0, poison), *shifted[0]])
    skipped = {s.labels["reason"]: s.value for m in gt.metrics.skipped.collect()
               for s in m.samples if s.name.endswith("_total")}  # fmt: skip
    assert skipped == {"invalid_feedback": 3}
    await finish(gt)
    restarted = service(demo_registry, state)  # a restart goes on from the store's offsets
    for p, lab in zip(predictions[1:], shifted[1:], strict=True):
        await restarted.consume(0, p, lab)
    assert await finish(restarted) == expected


async def test_class_names_read_right_after_a_restart_are_joined(
    demo_registry: Path, tmp_path: Path
) -> None:
    # A label given as a class name needs the model's metadata, which was loaded only for the
    # versions of the predictions in the same poll: after a restart, a poll of labels alone
    # skipped every class name as no_usable_label, for good.
    predictions, labels, _ = traffic(seed=9)
    first = service(demo_registry, tmp_path)
    await first.consume(0, predictions[0], [])
    await finish(first)
    names = ["malignant", "benign"]  # the demo model's class labels
    records = [orjson.loads(line) for line in labels[0][0].value.split(b"\n")]
    for record in records:
        record["labels"]["label"] = names[record["labels"]["label"]]
    restarted = service(demo_registry, tmp_path)
    await restarted.consume(0, [], [Message(0, b"\n".join(map(orjson.dumps, records)))])
    status = await finish(restarted)
    assert status["join"]["labels_joined"] == len(records)


IRIS = ["setosa", "versicolor", "virginica"]


def register_iris(registry: Path, *class_lists: list[str]) -> list[ValidationReport | None]:
    """Versions 1, 2, ... of a model ``iris`` listing these classes (the demo's graph: the join
    reads only their metadata); their validation reports, from one held-out set whose truth the
    probabilities understate for setosa (a reliability table that differs by class)."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.5, 0.5, 0.5], size=3000)
    skewed = probs * [4.0, 1.0, 1.0]
    truth = np.array([rng.choice(3, p=q / q.sum()) for q in skewed])
    graph = registry / "breast_cancer" / "1" / "model.onnx"
    reports = []
    for classes in class_lists:
        report = None
        if sorted(classes) == IRIS:  # (a version with other classes goes without)
            columns = [IRIS.index(c) for c in classes]  # the version's order
            report = validation_report(np.argsort(columns)[truth], probs[:, columns])
        metadata = ModelMetadata(class_labels=classes, validation=report)
        LocalRegistry(registry).register("iris", graph, metadata)
        reports.append(report)
    return reports


def served(
    rid: str, version: str, variant: str, time: float, label: int, probs: list[float]
) -> InferenceRecord:
    return {
        "schema_version": 2, "request_id": rid, "time": time, "endpoint": "iris",
        "model": "iris", "version": version, "variant": variant, "role": "primary", "rows": 1,
        "latency_s": 0.001, "status": "ok",
        "outputs": {"label": [label], "probabilities": [probs]},
    }  # fmt: skip


def labelled(rid: str, label: str | int, time: float) -> FeedbackRecord:
    return {"schema": FEEDBACK_SCHEMA, "model": "iris", "request_id": rid, "row": 0,
            "labels": {"label": label}, "time": time}  # fmt: skip


def skipped(gt: GroundTruthService) -> dict[str, float]:
    return {s.labels["reason"]: s.value for m in gt.metrics.skipped.collect()
            for s in m.samples if s.name.endswith("_total")}  # fmt: skip


async def test_a_label_means_its_class_whichever_variant_served_the_request(
    demo_registry: Path, tmp_path: Path
) -> None:
    # Two versions of one model list their classes in opposite orders (an export that orders
    # them otherwise) and split the traffic. A label by class name became an index in one
    # version's order and was compared with every prediction as if in its own: variant a's
    # right answers counted wrong and its wrong ones right, its confusion matrix mixed two
    # orders, and the A/B verdict compared the wrong numbers.
    reports = dict(zip("ab", register_iris(demo_registry, IRIS, IRIS[::-1]), strict=True))
    orders = {"a": IRIS, "b": IRIS[::-1]}  # variant a serves version 1, b version 2
    rng = np.random.default_rng(3)
    records: list[InferenceRecord] = []
    feedback: list[FeedbackRecord] = []
    truth: dict[str, list[tuple[str, str, float]]] = {"a": [], "b": []}  # true, predicted, p(true)
    for i in range(400):
        variant = "ab"[i % 2]
        order = orders[variant]
        true = IRIS[int(rng.integers(3))]
        wrong = [c for c in IRIS if c != true]
        predicted = true if rng.random() < (0.9 if variant == "a" else 0.6) else wrong[i % 2]
        probs = [0.8 if c == predicted else 0.1 for c in order]  # in the version's order
        rid = f"q{i}"
        records.append(served(rid, "1" if variant == "a" else "2", variant, 100.0 + i * 0.01,
                              order.index(predicted), probs))  # fmt: skip
        feedback.append(labelled(rid, true, 105.0))
        truth[variant].append((true, predicted, probs[order.index(true)]))
    # a prediction and a label of their own move both clocks past the window
    tick = ([Message(1, encode_records([served("tick", "1", "a", 130.0, 0, [1, 0, 0])]))],
            [Message(1, encode_feedback([labelled("nobody", "setosa", 130.0)]))])  # fmt: skip
    gt = service(demo_registry, tmp_path)
    await gt.consume(
        0, [Message(0, encode_records(records))], [Message(0, encode_feedback(feedback))]
    )
    await gt.consume(0, *tick)
    status = await finish(gt)

    streams = {s["variant"]: s for s in status["streams"].values()}
    space = streams["a"]["classes"]
    assert space in (IRIS, IRIS[::-1])
    assert streams["b"]["classes"] == space
    accuracy = {}
    for variant, rows in truth.items():
        confusion = np.zeros((3, 3), dtype=int)
        for true, predicted, _ in rows:
            confusion[space.index(true), space.index(predicted)] += 1
        accuracy[variant] = np.trace(confusion) / len(rows)
        totals = streams[variant]["totals"]
        assert totals["labels"] == len(rows)
        assert totals["accuracy"] == pytest.approx(accuracy[variant])
        assert totals["confusion"] == confusion.tolist()
        window = streams[variant]["latest_window"]["realized"]
        assert window["confusion"] == confusion.tolist()
        # the probabilities too are the space's columns: each row's p(true class)
        loss = np.mean([-np.log(p) for _, _, p in rows])
        assert window["log_loss"]["value"] == pytest.approx(loss, rel=1e-6)
        # and the version's reliability table calibrates each class's own column
        own = np.array(
            [r["outputs"]["probabilities"][0] for r in records if r["variant"] == variant]
        )
        report = reports[variant]
        assert report is not None
        expected = estimate_classification(own.astype(np.float32).astype(np.float64),
                                           report.calibration)  # fmt: skip
        estimated = streams[variant]["latest_window"]["estimated"]["accuracy"]["value"]
        assert estimated == pytest.approx(expected["accuracy"]["value"])
    assert accuracy["a"] > 0.8 > 0.7 > accuracy["b"]
    (pair,) = status["ab"]["iris"].values()
    assert pair["metric"] == "accuracy"
    assert pair["difference"] == pytest.approx(accuracy["b"] - accuracy["a"])
    assert "class_not_in_space" not in skipped(gt)


async def test_a_predicted_class_the_model_space_lacks_is_skipped_and_counted(
    demo_registry: Path, tmp_path: Path
) -> None:
    # A retrained version that gained a class, its classes in another order, after the
    # model's class space was fixed by the first: its predictions of the new class were
    # joined as whatever class had that index, and its others compared in the wrong order.
    register_iris(demo_registry, IRIS, ["virginica", "hybrid", "setosa", "versicolor"])
    gt = service(demo_registry, tmp_path)
    first = [served("old", "1", "a", 100.0, 2, [0.1, 0.1, 0.8])]
    await gt.consume(0, [Message(0, encode_records(first))],
                     [Message(0, encode_feedback([labelled("old", "virginica", 101.0)]))])  # fmt: skip
    second = [
        served("new-0", "2", "b", 102.0, 1, [0.1, 0.7, 0.1, 0.1]),  # hybrid: not in the space
        served("new-1", "2", "b", 102.5, 1, [0.1, 0.7, 0.1, 0.1]),
        served("new-2", "2", "b", 103.0, 3, [0.1, 0.1, 0.1, 0.7]),  # versicolor
        served("new-3", "2", "b", 103.5, 0, [0.7, 0.1, 0.1, 0.1]),  # virginica
    ]
    answers = [labelled("new-0", "setosa", 104.0), labelled("new-1", "hybrid", 104.0),
               labelled("new-2", "versicolor", 104.0), labelled("new-3", "setosa", 104.0)]  # fmt: skip
    await gt.consume(
        0, [Message(1, encode_records(second))], [Message(1, encode_feedback(answers))]
    )
    reasons = skipped(gt)
    status = await finish(gt)

    assert reasons["class_not_in_space"] == 2
    assert reasons["no_usable_label"] == 1  # the label "hybrid", no class of the space either
    streams = {s["variant"]: s for s in status["streams"].values()}
    assert streams["b"]["classes"] == IRIS  # fixed by version 1, the first read
    assert streams["b"]["predictions"] == 2
    confusion = np.zeros((3, 3), dtype=int)
    confusion[1, 1] = 1  # versicolor, right
    confusion[0, 2] = 1  # setosa, predicted virginica
    assert streams["b"]["totals"]["confusion"] == confusion.tolist()
    assert streams["a"]["totals"]["confusion"][2][2] == 1


async def test_a_label_in_text_is_a_class_name_never_an_index(
    demo_registry: Path, tmp_path: Path
) -> None:
    # The gateway logs a classifier's label as its class name, and a name may be digits that
    # the space lacks (a class "0" only a canary has). Text of digits was read as an index
    # when no class had that name: the label "0" joined as setosa, the space's class 0.
    register_iris(demo_registry, IRIS)
    gt = service(demo_registry, tmp_path)
    predictions = [served("r0", "1", "a", 100.0, 0, [0.8, 0.1, 0.1]),
                   served("r1", "1", "a", 100.5, 0, [0.8, 0.1, 0.1])]  # fmt: skip
    answers = [labelled("r0", "0", 101.0), labelled("r1", 0, 101.0)]  # text, and an index
    await gt.consume(
        0, [Message(0, encode_records(predictions))], [Message(0, encode_feedback(answers))]
    )
    reasons = skipped(gt)
    status = await finish(gt)

    assert reasons["no_usable_label"] == 1
    (stream,) = status["streams"].values()
    assert stream["totals"]["labels"] == 1  # the index 0 only


async def test_a_label_older_than_the_horizon_is_counted_too_old(
    demo_registry: Path, tmp_path: Path
) -> None:
    # A label's time older than every prediction the join keeps (horizon_s, 1000 s here) was
    # joined to a prediction served after it, or, its prediction not read yet, counted unknown
    # at once without having waited: nothing said its time was the trouble.
    register_iris(demo_registry, IRIS)
    gt = service(demo_registry, tmp_path)
    predictions = [served(f"r{i}", "1", "a", 5000.0 + i, 0, [0.8, 0.1, 0.1]) for i in range(2)]
    answers = [labelled("r0", 0, 1.0), labelled("r1", 0, 5001.5), labelled("later", 0, 1.0)]
    await gt.consume(
        0, [Message(0, encode_records(predictions))], [Message(0, encode_feedback(answers))]
    )
    later = [served("later", "1", "a", 5003.0, 0, [0.8, 0.1, 0.1])]
    await gt.consume(0, [Message(1, encode_records(later))], [])
    outcomes = {s.labels["outcome"]: s.value for m in gt.metrics.feedback.collect()
                for s in m.samples if s.name.endswith("_total")}  # fmt: skip
    status = await finish(gt)

    join = status["join"]
    assert (join["labels_too_old"], join["labels_joined"]) == (2, 1)
    assert (join["labels_unknown"], join["labels_pending"]) == (0, 0)
    assert outcomes["labels_too_old"] == 2
    (stream,) = status["streams"].values()
    assert stream["totals"]["labels"] == 1


def outcomes(gt: GroundTruthService) -> dict[str, float]:
    return {s.labels["outcome"]: s.value for m in gt.metrics.feedback.collect()
            for s in m.samples if s.name.endswith("_total")}  # fmt: skip


async def test_a_label_after_its_window_was_judged_is_counted_and_survives_a_restart(
    demo_registry: Path, tmp_path: Path
) -> None:
    # A label joined after its window was judged went into the running totals and no window,
    # and nothing counted it: a settle_s too short showed only as a low label coverage.
    register_iris(demo_registry, IRIS)
    gt = service(demo_registry, tmp_path)  # windows of 10 s, judged 5 s after their end
    window = [served(f"r{i}", "1", "a", 100.0 + i, 0, [0.8, 0.1, 0.1]) for i in range(4)]
    onward = [served("x", "1", "a", 120.0, 0, [0.8, 0.1, 0.1])]
    answers = [labelled("r0", 0, 104.0), labelled("r1", 1, 104.0), labelled("x", 0, 120.0)]
    await gt.consume(0, [Message(0, encode_records(window + onward))],
                     [Message(0, encode_feedback(answers))])  # fmt: skip
    (judged,) = gt.status()["streams"].values()
    assert judged["latest_window"]["window_id"] == "iris/1/a/w10"  # both clocks are at 120
    assert (judged["latest_window"]["labels"], judged["totals"]["labels_after_window"]) == (2, 0)

    await gt.consume(0, [], [Message(1, encode_feedback([labelled("r2", 0, 121.0)]))])
    (stream,) = gt.status()["streams"].values()
    assert gt.status()["join"]["labels_after_window"] == 1
    assert outcomes(gt)["labels_after_window"] == 1
    assert stream["totals"]["labels_after_window"] == 1
    assert stream["totals"]["labels"] == 4  # r0, r1, x and the late r2
    assert stream["latest_window"] == judged["latest_window"]  # the judged window unchanged
    await finish(gt)

    again = service(demo_registry, tmp_path)  # the monitor restarts from its store
    again.open(0)
    (restored,) = again.status()["streams"].values()
    assert restored["totals"]["labels_after_window"] == 1
    assert again.status()["join"]["labels_after_window"] == 1
    # it still knows window 10 is judged; window 12 (x's) is not
    await again.consume(0, [], [Message(2, encode_feedback([labelled("r3", 0, 122.0)]))])
    status = await finish(again)
    assert status["join"]["labels_after_window"] == 2
    (stream,) = status["streams"].values()
    assert (stream["totals"]["labels_after_window"], stream["totals"]["labels"]) == (2, 5)


async def test_a_store_from_before_judged_windows_were_kept_knows_them_from_its_cursor(
    demo_registry: Path, tmp_path: Path
) -> None:
    register_iris(demo_registry, IRIS)
    gt = service(demo_registry, tmp_path)
    window = [served(f"r{i}", "1", "a", 100.0 + i, 0, [0.8, 0.1, 0.1]) for i in range(2)]
    onward = [served("x", "1", "a", 120.0, 0, [0.8, 0.1, 0.1])]
    await gt.consume(0, [Message(0, encode_records(window + onward))],
                     [Message(0, encode_feedback([labelled("x", 0, 120.0)]))])  # fmt: skip
    await finish(gt)
    old = JoinStore(tmp_path / "performance-p0.sqlite")
    assert old.get("next_window") == {"iris": 12}
    old.put("judged", {})  # as a store written before the join knew the judged windows
    old.commit({}, JoinCounts())
    old.close()

    again = service(demo_registry, tmp_path)
    await again.consume(0, [], [Message(1, encode_feedback([labelled("r0", 0, 121.0)]))])
    status = await finish(again)
    assert status["join"]["labels_after_window"] == 1


async def test_a_label_read_ahead_of_its_prediction_in_a_catch_up_waits_for_it(
    demo_registry: Path, tmp_path: Path
) -> None:
    # Catching up, the labels' topic (small messages) is read ahead of the log's. A waiting
    # label was counted unknown once the labels' clock passed its time plus label_wait_s,
    # though its prediction was only not read yet, and dropped: never joined.
    register_iris(demo_registry, IRIS)
    gt = service(demo_registry, tmp_path, label_wait_s=10)
    first = [served("r0", "1", "a", 100.0, 0, [0.8, 0.1, 0.1])]
    await gt.consume(0, [Message(0, encode_records(first))], [])
    ahead = [labelled("r1", 0, 151.0), labelled("r2", 0, 300.0)]  # r1 served at 150
    await gt.consume(0, [], [Message(0, encode_feedback(ahead))])
    assert gt.status()["join"].get("labels_unknown", 0) == 0
    behind = [served("r1", "1", "a", 150.0, 0, [0.8, 0.1, 0.1])]
    await gt.consume(0, [Message(1, encode_records(behind))], [])
    status = await finish(gt)

    assert (status["join"]["labels_joined"], status["join"]["labels_unknown"]) == (1, 0)
    (stream,) = status["streams"].values()
    assert stream["totals"]["labels"] == 1
    assert status["join"]["labels_pending"] == 2  # r2 waits: its prediction may yet come


async def test_a_label_whose_prediction_never_comes_is_unknown_once_both_clocks_pass_its_wait(
    demo_registry: Path, tmp_path: Path
) -> None:
    register_iris(demo_registry, IRIS)
    gt = service(demo_registry, tmp_path, label_wait_s=10)
    first = [served("r0", "1", "a", 100.0, 0, [0.8, 0.1, 0.1])]
    await gt.consume(0, [Message(0, encode_records(first))],
                     [Message(0, encode_feedback([labelled("lost", 0, 101.0)]))])  # fmt: skip
    later = [served("r1", "1", "a", 112.0, 0, [0.8, 0.1, 0.1])]
    await gt.consume(0, [Message(1, encode_records(later))],
                     [Message(1, encode_feedback([labelled("r1", 0, 112.0)]))])  # fmt: skip
    assert (gt.status()["join"]["labels_unknown"], gt.status()["join"]["labels_joined"]) == (1, 1)
    # with the log silent, a label waits at most horizon_s (1000 s) of the labels' clock
    waiting = [labelled("gone", 0, 200.0), labelled("other", 0, 1300.0)]
    await gt.consume(0, [], [Message(2, encode_feedback(waiting))])
    assert gt.status()["join"]["labels_unknown"] == 2  # "gone"; "other" waits
    status = await finish(gt)
    assert status["join"]["labels_pending"] == 3  # lost, gone, other


async def test_a_window_without_labels_read_back_after_a_restart_is_observed_as_nan(
    demo_registry: Path, tmp_path: Path
) -> None:
    # A judged window without labels has a NaN accuracy, which the store keeps as null: after
    # a restart the first judgement set the gauge from it and the consumer died (float(None)).
    register_iris(demo_registry, IRIS)
    gt = service(demo_registry, tmp_path)
    window = [served(f"r{i}", "1", "a", 100.0 + i, 0, [0.8, 0.1, 0.1]) for i in range(2)]
    onward = [served("x", "1", "a", 120.0, 0, [0.8, 0.1, 0.1])]
    await gt.consume(0, [Message(0, encode_records(window + onward))],
                     [Message(0, encode_feedback([labelled("x", 0, 120.0)]))])  # fmt: skip
    await finish(gt)

    again = service(demo_registry, tmp_path)
    await again.consume(0, [], [Message(1, encode_feedback([labelled("r0", 0, 121.0)]))])
    accuracy = [s.value for m in again.metrics.metric.collect() for s in m.samples
                if (s.labels["metric"], s.labels["kind"], s.labels["bound"])
                == ("accuracy", "realized", "value")]  # fmt: skip
    status = await finish(again)
    assert len(accuracy) == 1
    assert np.isnan(accuracy[0])
    (stream,) = status["streams"].values()
    assert stream["latest_window"]["labels"] == 0


async def test_the_consumer_connects_with_the_monitors_kafka_security(
    demo_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the ground-truth consumer left the security settings out: on a SASL or TLS
    # cluster it connected in plaintext and the monitor stopped, while the drift side connected.
    made: list[dict[str, Any]] = []

    class Subscribed(Exception):
        pass

    class Consumer:
        def __init__(self, **options: Any) -> None:
            made.append(options)

        def subscribe(self, *args: Any, **kwargs: Any) -> None:
            raise Subscribed

    monkeypatch.setattr(ground_truth, "AIOKafkaConsumer", Consumer)
    settings = MonitorSettings(
        registry_root=demo_registry,
        state_dir=tmp_path,
        kafka={"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
               "sasl_username": "monitor", "sasl_password": "s3cret"},
        performance={"enabled": True},
    )  # fmt: skip
    gt = GroundTruthService(settings, PerformanceMetrics(CollectorRegistry()), Webhooks([]))
    with pytest.raises(Subscribed):
        await gt.run()
    await gt.infos.aclose()
    assert made[0]["security_protocol"] == "SASL_PLAINTEXT"
    assert made[0]["sasl_mechanism"] == "SCRAM-SHA-512"
    assert made[0]["sasl_plain_password"] == "s3cret"
