"""The ground-truth side of the monitor: a consumer group over the inference log and the
feedback topic that joins labels to predictions, judges windows of realized performance per
model version and variant, compares variants, and fires ``performance.degraded`` webhooks.

It runs beside the drift consumer, in its own consumer group (``performance.group_id``), so
the two keep their own offsets and state. Both topics are keyed by model and should have the
same number of partitions: the range assignor gives partition N of both to one instance, whose
join store for N (``state_dir/performance-pN.sqlite``) holds that partition's predictions,
labels, windows, decisions, A/B totals, undelivered events and the offsets of both topics,
committed in one transaction before the Kafka offsets. An instance taking a partition on seeks
to the offsets in the store, so a crash or a rebalance neither loses nor repeats anything.
A classifier's predictions and labels are compared in its model's one class space
(``monitors.class_space``), whichever version served them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from time import time as wall_clock
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError

from monitors.batch import well_formed
from monitors.class_space import (
    ClassLabelError,
    VersionClasses,
    class_positions,
    label_class,
    predicted_class,
)
from monitors.feedback import MAX_FUTURE_S, decode_feedback
from monitors.join import JoinCounts, JoinStore, Stream
from monitors.judge import WindowJudge, stream_key
from monitors.model_info import ModelInfo, ModelInfos
from monitors.outbox import Outbox
from monitors.performance_metrics import PerformanceMetrics
from monitors.schema import InferenceRecord, RecordError, decode_records
from monitors.settings import MonitorSettings
from monitors.webhooks import DEGRADED_EVENT_TYPE, Webhooks, drift_event
from registry_client import Registry, ValidationReport
from registry_client.settings import open_registry

__all__ = ["GroundTruthService"]

log = logging.getLogger(__name__)


class GroundTruthService:
    """Consumes both topics, joins, judges and alerts until stopped."""

    def __init__(
        self,
        settings: MonitorSettings,
        metrics: PerformanceMetrics,
        webhooks: Webhooks,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings
        self.performance = settings.performance
        self.metrics = metrics
        self.webhooks = webhooks
        self.outbox = Outbox(webhooks)
        self.stores: dict[int, JoinStore] = {}
        self.judges: dict[int, WindowJudge] = {}
        # versions' metadata through the configured registry (local folder or MLflow)
        self.infos = ModelInfos(
            registry or open_registry(settings.registry), settings.profile_retry_s
        )
        self._snapshots: dict[int, dict[str, Any]] = {}  # what /status shows, per partition
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()

    @property
    def topics(self) -> tuple[str, str]:
        return self.settings.kafka.topic, self.performance.feedback_topic

    # -- partitions ---------------------------------------------------------------------------

    def open(self, partition: int) -> JoinStore:
        """Take a partition on: its store (created when new), judge and undelivered events."""
        store = self.stores.get(partition)
        if store is None:
            path = self.settings.state_dir / f"performance-p{partition}.sqlite"
            window = self.performance.window
            store = self.stores[partition] = JoinStore(path, window.by)
            for model, number in store.get("next_window", {}).items():
                if store.judged_before(model) is None:  # a store from before mark_judged
                    store.mark_judged(model, number * window.size_s)
            judge = self.judges[partition] = WindowJudge(self.performance, store)
            self.outbox.restore(partition, store.get("outbox", {}))
            self._snapshots[partition] = self._snapshot(store, judge)
        return store

    def close(self, partition: int) -> None:
        """Give a partition up (its next owner resumes from the store's last commit)."""
        store = self.stores.pop(partition, None)
        self.judges.pop(partition, None)
        self._snapshots.pop(partition, None)
        self.outbox.forget(partition)
        if store is not None:
            store.close()

    # -- the loop -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        kafka = self.settings.kafka
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=self.performance.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(kafka.session_timeout_s * 1000),
            heartbeat_interval_ms=int(kafka.heartbeat_interval_s * 1000),
            partition_assignment_strategy=(RangePartitionAssignor,),
            **kafka.security_options(),
        )
        consumer.subscribe(list(self.topics), listener=_Rebalance(self, consumer))
        self.outbox.start()
        try:
            await consumer.start()
            while not self._stopping.is_set():
                batches = await consumer.getmany(
                    timeout_ms=500, max_records=kafka.max_batch_records
                )
                if batches:
                    async with self._lock:
                        await self._consume_batches(consumer, batches)
        finally:
            await self.outbox.stop(self.settings.webhook_timeout_s)
            await consumer.stop()
            for partition in list(self.stores):
                self.close(partition)
            await self.infos.aclose()

    async def _consume_batches(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[Any]]
    ) -> None:
        by_partition: dict[int, dict[str, list[Any]]] = {}
        for tp, messages in batches.items():
            by_partition.setdefault(tp.partition, {})[tp.topic] = messages
        commits: dict[TopicPartition, int] = {}
        for partition, topics in by_partition.items():
            if partition not in self.stores:
                continue  # revoked since the fetch: its next owner reads these again
            predictions = topics.get(self.topics[0], [])
            labels = topics.get(self.topics[1], [])
            await self.consume(partition, predictions, labels)
            for topic, messages in topics.items():
                commits[TopicPartition(topic, partition)] = int(messages[-1].offset) + 1
        self.outbox.dispatch()
        try:
            await consumer.commit(commits)
        except (CommitFailedError, KafkaError) as exc:  # the store's offsets are what count
            log.warning("performance: offsets not committed (%s)", exc)

    async def consume(
        self, partition: int, predictions: Sequence[Any], labels: Sequence[Any]
    ) -> None:
        """Join one partition's messages of both topics (Kafka consumer records in offset
        order), judge the windows they close, and commit the store: the log is decoded and
        the store written in a thread, the versions' metadata read from the registry between."""
        decoded = await asyncio.to_thread(self._decode, predictions)
        for model, version in sorted({(r["model"], r["version"]) for _, rs in decoded for r in rs}):
            await self.infos.load(model, version)
        if labels:
            # A class name needs its model's metadata, loaded above only for this poll's
            # predictions: after a restart, a poll of labels alone takes the versions the
            # partition's store has streams of.
            store = await asyncio.to_thread(self.open, partition)
            known = self.infos.targets
            stored = {(s.model, s.version) for s in store.streams if s.model not in known}
            for model, version in sorted(stored):
                await self.infos.load(model, version)
        await asyncio.to_thread(self._consume, partition, decoded, labels)

    def _decode(self, messages: Sequence[Any]) -> list[tuple[int, list[InferenceRecord]]]:
        """(offset, records) of each message of the inference log; undecodable ones and
        malformed records (``monitors.batch.well_formed``, or a request id or variant that is
        not text) counted."""
        decoded: list[tuple[int, list[InferenceRecord]]] = []
        for message in messages:
            try:
                records = decode_records(message.value or b"", features=False)
            except RecordError as exc:
                log.warning("performance: undecodable log message at %d: %s", message.offset, exc)
                self.metrics.skipped.labels("undecodable").inc()
                records = []
            latest = wall_clock() + MAX_FUTURE_S
            kept = [
                r
                for r in records
                if well_formed(r["model"], r["version"], r["rows"], r["time"], latest)
                # the join's key and stream: text, or the store and the bound on variants fail
                and type(r["request_id"]) is str
                and type(r.get("variant", "")) is str
            ]
            if len(kept) < len(records):  # fields of the wrong type, out of range, far ahead
                self.metrics.skipped.labels("malformed").inc(len(records) - len(kept))
            decoded.append((int(message.offset), kept))
        return decoded

    def _consume(
        self,
        partition: int,
        predictions: list[tuple[int, list[InferenceRecord]]],
        labels: Sequence[Any],
    ) -> None:
        store = self.open(partition)
        # what the store already holds (a batch read again after a crash before the Kafka
        # commit) is skipped: the store's offsets are the truth
        done = store.offsets()
        predictions = [m for m in predictions if m[0] >= done.get(self.topics[0], 0)]
        labels = [m for m in labels if m.offset >= done.get(self.topics[1], 0)]
        counts = JoinCounts()
        # Each topic's clock is the latest event time read from it; windows close on the slower
        # of the two, so a window is never judged before the labels of its time are read. A
        # partition that never saw a label runs on the predictions' clock (estimates only).
        clocks: dict[str, float | None] = store.get("clocks", {"predictions": 0.0, "labels": None})
        rows, latest = self._prediction_rows(store, predictions)
        clocks["predictions"] = max(clocks["predictions"] or 0.0, latest)
        _add(counts, store.add_predictions(rows))
        label_rows, latest = self._label_rows(store, labels)
        if label_rows:
            clocks["labels"] = max(clocks["labels"] or 0.0, latest)
        predicted_at = clocks["predictions"] or 0.0
        horizon = predicted_at - self.performance.horizon_s
        _add(counts, store.add_labels(label_rows, before=horizon))
        labelled_at = clocks["labels"]
        watermark = predicted_at if labelled_at is None else min(predicted_at, labelled_at)
        # A waiting label is unknown once the slower clock passes its wait: on the labels' alone,
        # a catch-up that reads labels ahead of the log would count unknown labels whose
        # predictions are just not read yet. However far the log lags (or while it is silent),
        # a label waits at most horizon_s of the labels' clock: the waiting stay bounded.
        waited = watermark - self.performance.label_wait_s
        if labelled_at is not None:
            waited = max(waited, labelled_at - self.performance.horizon_s)
        _add(
            counts,
            store.expire(horizon, waited, predicted_at - 2 * self.performance.horizon_s),
        )
        self._judge(partition, store, watermark)
        store.put("clocks", clocks)
        store.put("outbox", self.outbox.pending(partition))
        offsets = {}
        if predictions:
            offsets[self.topics[0]] = predictions[-1][0] + 1
        if labels:
            offsets[self.topics[1]] = int(labels[-1].offset) + 1
        store.commit(offsets, counts)
        self.metrics.joined(counts)
        self._snapshots[partition] = self._snapshot(store, self.judges[partition])

    def _prediction_rows(
        self, store: JoinStore, messages: list[tuple[int, list[InferenceRecord]]]
    ) -> tuple[list[tuple[str, int, int, float, float, bytes | None]], float]:
        rows: list[tuple[str, int, int, float, float, bytes | None]] = []
        latest = 0.0
        # (model, version) -> the version's classes in the model's class space (None: a regressor)
        spaces: dict[tuple[str, str], VersionClasses | None] = {}
        for _, records in messages:
            for record in records:
                latest = max(latest, record["time"])
                if record["role"] != "primary" or record["status"] != "ok":
                    continue
                model, version = record["model"], record["version"]
                info = self.infos.get(model, version)
                outputs = record.get("outputs") or {}
                name = (info.label_output if info else None) or next(iter(outputs), None)
                if info is None or name not in outputs:
                    self.metrics.skipped.labels("no_metadata_or_output").inc(record["rows"])
                    continue
                if (model, version) not in spaces:
                    space = self._space(store, model, info) if info.classes else None
                    spaces[model, version] = (
                        None if space is None else VersionClasses.of(info.class_labels, space)
                    )
                classes = spaces[model, version]
                stream = store.stream(
                    model, version, record.get("variant", "default"),
                    classes.size if classes is not None else 0,
                )  # fmt: skip
                try:
                    joinable, outside = _rows(record, stream, info, outputs[name], classes)
                except (IndexError, KeyError, TypeError, ValueError) as exc:
                    # outputs of fewer rows than the record's, or not numbers: none of them
                    log.warning("performance: malformed log record %r: %s", record, exc)
                    self.metrics.skipped.labels("malformed").inc()
                    continue
                rows += joinable
                if outside:
                    self.metrics.skipped.labels("class_not_in_space").inc(outside)
        return rows, latest

    def _space(self, store: JoinStore, model: str, info: ModelInfo | None) -> list[str] | None:
        """The model's class space in this partition's store (``monitors.class_space``), fixed
        the first time it is needed: the class names of the model's target version (whose
        metadata was read last), or else of ``info``'s; None for a regressor."""
        space = store.classes(model)
        if space is None:
            for candidate in (self.infos.targets.get(model), info):
                if candidate is not None and candidate.classes:
                    return store.fix_classes(model, candidate.class_labels)
        return space

    def _label_rows(
        self, store: JoinStore, messages: Sequence[Any]
    ) -> tuple[list[tuple[str, int, float, float]], float]:
        rows: list[tuple[str, int, float, float]] = []
        latest = 0.0
        positions: dict[str, dict[str, int]] = {}  # model -> its class space's name -> index
        for message in messages:
            records, problems = decode_feedback(message.value or b"", message.timestamp / 1000)
            if problems:
                self.metrics.skipped.labels("invalid_feedback").inc(len(problems))
                log.warning("performance: invalid feedback at %d: %s", message.offset, problems[0])
            for record in records:
                time = record.get("time", message.timestamp / 1000)
                latest = max(latest, time)
                info = self.infos.targets.get(record["model"])
                labels = record["labels"]
                target = info.label_output if info is not None else None
                value = labels.get(target) if target else None
                if value is None and len(labels) == 1:
                    value = next(iter(labels.values()))
                space = self._space(store, record["model"], None) if value is not None else None
                if space is not None:
                    names = positions.get(record["model"])
                    if names is None:  # a space, once fixed, stays: looked up once a batch
                        names = positions[record["model"]] = class_positions(space)
                    try:
                        value = label_class(value, names, len(space))
                    except ClassLabelError:
                        value = None
                if value is None or isinstance(value, str):
                    self.metrics.skipped.labels("no_usable_label").inc()
                    continue
                rows.append((record["request_id"], record["row"], float(value), time))
        return rows, latest

    def _judge(self, partition: int, store: JoinStore, watermark: float) -> None:
        """Judge every window that has closed: its end plus the settling time has passed."""
        window = self.performance.window
        judge = self.judges[partition]
        next_windows: dict[str, int] = store.get("next_window", {})
        models = sorted({s.model for s in store.streams})
        for model in models:
            streams = [s for s in store.streams if s.model == model]
            number = next_windows.get(model)
            while True:
                if number is None or not self._any_rows(store, streams, number):
                    first = min(
                        (t for s in streams
                         if (t := store.first_time(s, window.by, (number or 0) * window.size_s))
                         is not None),
                        default=None,
                    )  # fmt: skip
                    if first is None:
                        break
                    number = math.floor(first / window.size_s)
                if (number + 1) * window.size_s + window.settle_s > watermark:
                    break
                reports = {
                    (s.model, s.version): self._validation(store, s.model, s.version)
                    for s in streams
                }
                for degradation in judge.judge(model, number, streams, reports):
                    self._alert(partition, degradation.data, degradation.window_id)
                number += 1
            if number is not None:
                next_windows[model] = number
                store.mark_judged(model, number * window.size_s)
        for key, results in judge.latest.items():
            self.metrics.observe(key, results[-1])
        for model, pairs in judge.verdicts.items():
            for pair in pairs.values():
                self.metrics.verdict(model, pair)
        store.put("next_window", next_windows)
        judge.save()

    def _any_rows(self, store: JoinStore, streams: list[Any], number: int) -> bool:
        window = self.performance.window
        start = number * window.size_s
        return any(
            (t := store.first_time(s, window.by, start)) is not None and t < start + window.size_s
            for s in streams
        )

    def _validation(self, store: JoinStore, model: str, version: str) -> ValidationReport | None:
        """The version's validation report, its calibration table in the model's class space."""
        info = self.infos.get(model, version)
        if info is None:
            return None
        report, space = info.validation, store.classes(model)
        if report is None or report.calibration is None or not info.classes or space is None:
            return report
        table = VersionClasses.of(info.class_labels, space).calibration(report.calibration)
        if table is report.calibration:
            return report
        return report.model_copy(update={"calibration": table})

    def _alert(self, partition: int, data: dict[str, Any], window_id: str) -> None:
        event_id, body = drift_event(
            self.settings.source, data["model"], data["version"], window_id, data,
            event_type=DEGRADED_EVENT_TYPE,
        )  # fmt: skip
        log.warning(
            "performance of %s/%s (%s) degraded: %s %s, validation %s",
            data["model"], data["version"], data["variant"], data["metric"],
            data["realized"], data["validation"],
        )  # fmt: skip
        self.metrics.degraded(data["model"], data["version"], data["variant"])
        self.outbox.add(partition, event_id, body)

    # -- what /status shows -------------------------------------------------------------------

    def _snapshot(self, store: JoinStore, judge: WindowJudge) -> dict[str, Any]:
        """One partition's part of ``/status``, taken after its commit (in the consumer's
        thread: the store is not read from anywhere else)."""
        streams: dict[str, Any] = {}
        for stream in store.streams:
            key = stream_key(stream)
            totals = _totals(store.totals(stream))
            # of the labels: joined after their window was judged (in no window's figures)
            totals["labels_after_window"] = store.after_window(stream)
            predicted = store.predicted(stream)
            streams[key] = {
                "model": stream.model,
                "version": stream.version,
                "variant": stream.variant,
                # the order of the confusion matrix's rows and columns (None: a regressor)
                "classes": store.classes(stream.model) if stream.classes else None,
                "predictions": predicted,
                "totals": totals,
                "coverage": totals["labels"] / predicted if predicted else None,
                "latest_window": judge.latest[key][-1] if judge.latest.get(key) else None,
            }
        verdicts = {model: dict(pairs) for model, pairs in judge.verdicts.items()}
        return {"streams": streams, "join": store.counters(), "ab": verdicts}

    def status(self) -> dict[str, Any]:
        """Latest window per stream, running totals, join counters, A/B verdicts."""
        streams: dict[str, Any] = {}
        counters: dict[str, int] = {}
        verdicts: dict[str, Any] = {}
        for snapshot in list(self._snapshots.values()):
            streams.update(snapshot["streams"])
            for name, value in snapshot["join"].items():
                counters[name] = counters.get(name, 0) + value
            for model, pairs in snapshot["ab"].items():
                verdicts.setdefault(model, {}).update(pairs)
        return {"streams": streams, "join": counters, "ab": verdicts}

    def verdicts(self, model: str) -> list[dict[str, Any]]:
        """The model's A/B pairs (the canary's input)."""
        pairs: list[dict[str, Any]] = []
        for snapshot in list(self._snapshots.values()):
            pairs.extend(snapshot["ab"].get(model, {}).values())
        return pairs


def _totals(totals: dict[str, Any]) -> dict[str, Any]:
    if "confusion" in totals:
        confusion = totals["confusion"]
        n = int(confusion.sum())
        return {
            "labels": n,
            "accuracy": float(np.trace(confusion)) / n if n else None,
            "confusion": confusion.tolist(),
        }
    n = totals["count"]
    return {
        "labels": n,
        "mae": totals["abs_sum"] / n if n else None,
        "rmse": math.sqrt(totals["sq_sum"] / n) if n else None,
    }


def _rows(
    record: InferenceRecord,
    stream: Stream,
    info: ModelInfo,
    values: Any,
    classes: VersionClasses | None,
) -> tuple[list[tuple[str, int, int, float, float, bytes | None]], int]:
    """The joinable rows of a served record, (request id, row, stream, time, output, scores),
    a classifier's in its model's class space (``classes``); and how many rows predicted a class
    the space lacks."""
    rows = []
    outside = 0
    scores = record["outputs"].get(info.score_output or "probabilities") if classes else None
    for row in range(record["rows"]):
        value = values[row]
        blob = None
        if classes is not None:
            value = predicted_class(value, info.class_labels)  # the version's own index
            if value is None:
                continue
            value = classes.index[value]
            if value < 0:
                outside += 1
                continue
            # a stream made before its model's space was fixed may have another class count
            if scores is not None and stream.classes == classes.size:
                blob = classes.probabilities(scores[row])
        rows.append((record["request_id"], row, stream.id, record["time"], float(value), blob))
    return rows, outside


def _add(total: JoinCounts, more: JoinCounts) -> None:
    for name in total.__slots__:
        setattr(total, name, getattr(total, name) + getattr(more, name))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Closes revoked partitions' stores after the batch in progress; seeks assigned ones to
    the offsets their stores committed."""

    def __init__(self, service: GroundTruthService, consumer: AIOKafkaConsumer) -> None:
        self._service = service
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._service._lock:
            for partition in {tp.partition for tp in revoked}:
                self._service.close(partition)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        service = self._service
        async with service._lock:
            for tp in assigned:
                store = await asyncio.to_thread(service.open, tp.partition)
                offset = store.offsets().get(tp.topic)
                if offset is not None:
                    self._consumer.seek(tp, offset)
        service.metrics.partitions.set(len({tp.partition for tp in assigned}))
