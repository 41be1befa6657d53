"""The monitor service: a Kafka consumer group over the inference log, windows per model version,
evaluation, decisions, webhooks; offsets committed only behind state that is safe.

Safety: after each batch of a partition, its window panes, decision state, evaluation marks and
undelivered webhook events are written with the offset after the batch to the changelog topic
(``monitors/changelog.py``), and once the broker acknowledged them, to the local cache
(``monitors/state.py``); only then is that offset committed. An instance taking a partition on,
on this machine or another, restores the partition's latest snapshot and reads on from the
offset stored in it (which is the committed one, or later when an instance died between its
snapshot and its commit), so every record lands in exactly one window, whatever the number of
records per Kafka message or of model versions per partition; a window is evaluated once (its id
is the model version's window sequence number).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Gauge

from monitors._jsonl import read_entries, repair_tail
from monitors.batch import Part, RecordBatch, served_primaries
from monitors.changelog import Changelog, ChangelogError
from monitors.decision import Decider, DecisionState
from monitors.evaluate import DetectorConfig, WindowResult, evaluate
from monitors.history import HISTORY_DIR, WindowHistory, history_entry
from monitors.labels import OTHER
from monitors.metrics import MonitorMetrics
from monitors.outbox import Outbox
from monitors.profile import ModelProfile
from monitors.references import ReferenceProfiles
from monitors.schema import RecordError, decode_columns
from monitors.settings import MonitorSettings
from monitors.snapshot_codec import SnapshotCodecError, assemble, decode, encode
from monitors.state import CachedSnapshot, PartitionSnapshot, SnapshotCache, choose_source
from monitors.webhooks import Webhooks, WebhookTarget, drift_event
from monitors.windows import Windows, WindowSpec
from registry_client.settings import open_registry

__all__ = ["MonitorService"]

log = logging.getLogger(__name__)

_AUDIT_FILE = "windows.jsonl"
_AUDIT_IDS_KEPT = 20_000


class MonitorService:
    """Consumes, evaluates and alerts until stopped."""

    def __init__(self, settings: MonitorSettings, metrics: MonitorMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.references = ReferenceProfiles(
            open_registry(settings.registry), settings.profile_retry_s
        )
        self.spec = WindowSpec(
            settings.window.by,
            settings.window.size,
            settings.window.slide,
            settings.window.lateness_s,
        )
        self.detector = DetectorConfig(**settings.detector.model_dump())
        self.decider = Decider(settings.decision.consecutive, settings.decision.cooldown_windows)
        self.webhooks = Webhooks(
            [WebhookTarget(w.name, w.url, w.secret.get_secret_value()) for w in settings.webhooks],
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            backoff_s=settings.webhook_backoff_s,
            on_delivery=metrics.delivered,
        )
        self.outbox = Outbox(self.webhooks)
        self.history = WindowHistory(settings.state_dir / HISTORY_DIR, settings.history.max_windows)
        self.latest: dict[str, dict[str, Any]] = {}
        self._positions: dict[int, int] = {}
        self._windows: dict[tuple[int, str, str], Windows] = {}
        self._sequence: dict[tuple[int, str, str], int] = {}
        self._evaluated: dict[tuple[int, str, str], int] = {}
        self._cache = SnapshotCache(settings.state_dir, settings.kafka.topic)
        self.changelog = Changelog(settings.kafka, metrics)
        self._restored: set[int] = set()
        self._revoked: set[int] = set()
        self._audit: list[dict[str, Any]] = []
        self._audited: deque[str] | None = None
        # drift events of the batch being consumed, not in the outbox yet: later windows of the
        # same episode in the batch (a monitor catching up) are added to them
        self._events: dict[str, _Event] = {}
        self._stopping = asyncio.Event()
        # held from a poll's return to its commit: a revocation waits for the batch's snapshots,
        # so the partition's next owner reads them (Kafka Streams commits on revocation too)
        self._batch_lock = asyncio.Lock()

    # -- state --------------------------------------------------------------------------------

    def _snapshot(self, partition: int, offset: int) -> PartitionSnapshot:
        snapshot = PartitionSnapshot(offset)
        for (p, model, version), windows in self._windows.items():
            if p != partition:
                continue
            key = f"{model}/{version}"
            snapshot.windows[key] = windows.to_state()
            snapshot.sequence[key] = self._sequence.get((p, model, version), 0)
            snapshot.evaluated[key] = self._evaluated.get((p, model, version), 0)
            if key in self.decider.states:
                snapshot.decisions[key] = self.decider.states[key].to_dict()
        snapshot.pending = self.outbox.pending(partition)
        return snapshot

    async def _save(self, snapshots: dict[int, PartitionSnapshot]) -> set[int]:
        """The history and the audit trail first (deduplicated by window id), then each
        snapshot to the changelog and the cache; the partitions whose snapshot is safe."""
        await asyncio.to_thread(self._save_audit)
        saved = await asyncio.gather(*(self._persist(p, s) for p, s in snapshots.items()))
        return {p for p, ok in zip(snapshots, saved, strict=True) if ok}

    async def _persist(self, partition: int, snapshot: PartitionSnapshot) -> bool:
        limit = self.settings.kafka.changelog.max_message_bytes
        try:
            encoded = await asyncio.to_thread(encode, partition, snapshot, limit)
            offset = await self.changelog.write(partition, encoded)
        except (ChangelogError, SnapshotCodecError) as exc:
            # The state in memory goes on; the next snapshot of the partition covers it.
            log.error("partition %d: offset %d not committed: %s", partition, snapshot.offset, exc)
            return False
        await asyncio.to_thread(self._cache.save, partition, CachedSnapshot(offset, snapshot))
        return True

    def _save_audit(self) -> None:
        directory = self.settings.state_dir
        directory.mkdir(parents=True, exist_ok=True)
        self.history.flush()
        if self._audit:
            audited = self._audit_ids()
            with (directory / _AUDIT_FILE).open("a") as fh:
                for entry in self._audit:
                    if entry["window_id"] not in audited:  # re-evaluated after a crash
                        fh.write(json.dumps(entry) + "\n")
                        audited.append(entry["window_id"])
            self._audit.clear()

    def _audit_ids(self) -> deque[str]:
        if self._audited is None:
            path = self.settings.state_dir / _AUDIT_FILE
            repair_tail(path)  # what a crash cut short is not glued to the next line
            entries = read_entries(path, {"window_id": str})[-_AUDIT_IDS_KEPT:]
            self._audited = deque((e["window_id"] for e in entries), maxlen=_AUDIT_IDS_KEPT)
        return self._audited

    async def _restore(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        """Take on a partition: the latest snapshot of the changelog (or its cached copy), or
        none; False when the changelog cannot be read (the partition is taken on later)."""
        began = time.monotonic()
        committed = await consumer.committed(tp)
        try:
            latest = await self.changelog.read(tp.partition)
        except ChangelogError as exc:
            self.metrics.restores.labels("failed").inc()
            log.error("partition %d: not taken on yet: %s", tp.partition, exc)
            return False
        cache = await asyncio.to_thread(self._cache.load, tp.partition)
        source: str = choose_source(latest.offset, cache)
        snapshot: PartitionSnapshot | None = None
        if source == "cache" and cache is not None:
            snapshot = cache.snapshot
        elif source == "changelog" and latest.head is not None:
            try:
                snapshot = await asyncio.to_thread(decode, assemble(latest.head, latest.chunks))
            except SnapshotCodecError as exc:
                source = "undecodable"
                log.error("partition %d: changelog snapshot unusable: %s", tp.partition, exc)
        else:
            await asyncio.to_thread(self._cache.drop, tp.partition)
        if snapshot is not None and committed is not None and snapshot.offset < committed:
            # Committed by an instance that did not write this changelog: not this offset's.
            source, snapshot = "stale", None
        self._restored.add(tp.partition)
        self.metrics.restores.labels(source).inc()
        self.metrics.restore_seconds.observe(time.monotonic() - began)
        if snapshot is None:
            if committed is not None:
                self._positions[tp.partition] = committed
            log.info(
                "partition %d: %s, empty windows from offset %s", tp.partition, source, committed
            )
            return True
        keys = (key.partition("/") for key in snapshot.windows)
        await self.references.load_all((model, version) for model, _, version in keys)
        for key, state in snapshot.windows.items():
            model, _, version = key.partition("/")
            profile = self._profile(model, version)
            if profile is None:
                continue
            try:
                windows = Windows.restore(self.spec, profile, state)
            except (ValueError, KeyError) as exc:
                log.warning(
                    "partition %d, %s: window state not restored: %s", tp.partition, key, exc
                )
                continue
            self._windows[(tp.partition, model, version)] = windows
            self._sequence[(tp.partition, model, version)] = snapshot.sequence.get(key, 0)
            self._evaluated[(tp.partition, model, version)] = snapshot.evaluated.get(key, 0)
        for key, decision in snapshot.decisions.items():
            self.decider.states[key] = DecisionState(**decision)
        self.outbox.restore(tp.partition, snapshot.pending)
        self._positions[tp.partition] = snapshot.offset
        log.info(
            "partition %d: state restored from the %s at offset %d (committed: %s)",
            tp.partition,
            source,
            snapshot.offset,
            committed,
        )
        return True

    def _drop_revoked(self) -> None:
        revoked = set(self._revoked)
        self._revoked.clear()  # in place: the rebalance listener holds this set
        for partition in revoked:
            self._restored.discard(partition)
            self.changelog.forget(partition)
            self.outbox.forget(partition)
            self._positions.pop(partition, None)
            for stream in [k for k in self._windows if k[0] == partition]:
                del self._windows[stream]
                self._sequence.pop(stream, None)
                self._evaluated.pop(stream, None)
                self.decider.states.pop(f"{stream[1]}/{stream[2]}", None)

    # -- the loop -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        # A consumer batch of version 1 messages holds thousands of freshly parsed records (a
        # dict and a list per feature each); with the collector's default thresholds,
        # collections triggered while they are alive cost more than the parsing (21k against
        # 59k records/s measured). Version 2 messages parse into a few long lists per message.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        kafka = self.settings.kafka
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=kafka.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(kafka.session_timeout_s * 1000),
            heartbeat_interval_ms=int(kafka.heartbeat_interval_s * 1000),
            **kafka.security_options(),
        )
        consumer.subscribe(
            [kafka.topic],
            listener=_Revocations(self._revoked, self._batch_lock, self.metrics.partitions),
        )
        self.outbox.start()
        try:
            await self.changelog.start()
            await consumer.start()
            while not self._stopping.is_set():
                batches = await consumer.getmany(
                    timeout_ms=500, max_records=kafka.max_batch_records
                )
                async with self._batch_lock:
                    await self._process(consumer, batches)
        finally:
            await self._shutdown(consumer)

    async def _process(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[Any]]
    ) -> None:
        """Consume a poll's batches, snapshot the partitions, commit."""
        self._drop_revoked()
        assigned = consumer.assignment()  # what a rebalance took away meanwhile is not ours
        batches = {tp: messages for tp, messages in batches.items() if tp in assigned}
        if not batches:
            return
        commits: dict[TopicPartition, int] = {}
        for tp, messages in batches.items():
            if tp.partition not in self._restored:
                if not await self._restore(consumer, tp):
                    consumer.seek(tp, messages[0].offset)  # read again, later
                    continue
                # the snapshot may be ahead of the committed offset
                start = self._positions.get(tp.partition, 0)
                messages = [m for m in messages if m.offset >= start]
                if not messages:
                    consumer.seek(tp, start)
                    continue
            commits[tp] = await self.consume(tp.partition, messages)
            highwater = consumer.highwater(tp)
            if highwater is not None:
                self.metrics.lag.labels(str(tp.partition)).set(highwater - commits[tp])
        # A partition revoked meanwhile belongs to its next owner: neither saved nor
        # committed here (that owner resumes from the partition's latest snapshot).
        commits = {tp: o for tp, o in commits.items() if tp.partition not in self._revoked}
        self._audit = [e for e in self._audit if e["partition"] not in self._revoked]
        self.history.discard(self._revoked)
        snapshots = {tp.partition: self._snapshot(tp.partition, o) for tp, o in commits.items()}
        saved = await self._save(snapshots)
        self.outbox.dispatch()  # events are in the snapshots now
        self._positions.update({tp.partition: o for tp, o in commits.items()})
        commits = {tp: o for tp, o in commits.items() if tp.partition in saved}
        if not commits:
            return
        try:
            await consumer.commit(commits)
        except (CommitFailedError, KafkaError) as exc:
            # Harmless: the snapshots hold the offsets, and are ahead of the commit.
            log.warning("offsets not committed (%s); the snapshots hold them", exc)

    async def _shutdown(self, consumer: AIOKafkaConsumer) -> None:
        """Deliver what is queued, note what was delivered in the snapshots, stop; the Kafka
        part within ``shutdown_timeout_s``, however the broker answers."""
        await self.outbox.stop(self.settings.webhook_timeout_s)
        self._drop_revoked()
        snapshots = {p: self._snapshot(p, o) for p, o in self._positions.items()}
        budget = self.settings.shutdown_timeout_s
        try:
            async with asyncio.timeout(budget):
                await self._save(snapshots)  # same offsets as committed
                await consumer.stop()
                await self.changelog.stop()
        except TimeoutError:
            # Nothing is lost: offsets are committed only behind saved snapshots, so the next
            # owner of a partition reads again from there.
            log.error(
                "shutdown: Kafka did not answer within %g s (shutdown_timeout_s); the last "
                "snapshots may be unsaved, and their records are read again after a restart",
                budget,
            )
        await self.webhooks.aclose()
        await self.references.aclose()

    async def consume(self, partition: int, messages: Sequence[Any]) -> int:
        """Process one partition's messages (Kafka consumer records, in offset order): window
        and evaluate their records; return the offset that is safe to commit after them."""
        groups: dict[tuple[str, str], list[Part]] = {}
        for message in messages:
            try:
                columns = decode_columns(message.value or b"")
            except RecordError as exc:
                log.warning("skipping an undecodable message at offset %d: %s", message.offset, exc)
                self.metrics.skipped.labels("undecodable").inc()
                continue
            parts, others = served_primaries(columns, message.offset)
            for reason, count in others.items():
                self.metrics.skipped.labels(reason).inc(count)
            for key, part in parts.items():
                groups.setdefault(key, []).append(part)
        await self.references.load_all(groups)
        for (model, version), group in groups.items():
            count = sum(map(len, group))
            windows = self._windows_for(partition, model, version)
            if windows is None:
                # a label only for versions with a profile: the log's text makes no series
                self.metrics.records.labels(OTHER, OTHER).inc(count)
                self.metrics.skipped.labels("no_reference_profile").inc(count)
                continue
            self.metrics.records.labels(model, version).inc(count)
            batch = RecordBatch.from_parts(windows.profile, group)
            stream = (partition, model, version)
            for panes, summary in windows.add_batch(batch):
                sequence = self._sequence[stream] = self._sequence.get(stream, 0) + 1
                window_id = f"{model}/{version}/p{partition}/{sequence}"
                if sequence <= self._evaluated.get(stream, 0):
                    continue  # evaluated before a crash, in the batch being read again
                result = evaluate(
                    summary,
                    windows.profile,
                    self.detector,
                    model=model,
                    version=version,
                    window_id=window_id,
                    start_time=panes[0].start_time,
                    end_time=panes[-1].end_time,
                )
                doc = result.to_dict()
                entry = history_entry(doc, summary, windows.profile, partition)
                self.history.add(partition, entry, windows.profile)
                self._act(result, doc, partition)
                self._evaluated[stream] = sequence
        for event in self._events.values():
            event_id, body = drift_event(
                self.settings.source, event.model, event.version, event.window_id, event.data
            )
            self.outbox.add(event.partition, event_id, body)
        self._events.clear()
        return int(messages[-1].offset) + 1

    def _windows_for(self, partition: int, model: str, version: str) -> Windows | None:
        key = (partition, model, version)
        if key not in self._windows:
            profile = self._profile(model, version)
            if profile is None:
                return None
            self._windows[key] = Windows(self.spec, profile)
        return self._windows[key]

    def _profile(self, model: str, version: str) -> ModelProfile | None:
        return self.references.get(model, version)

    def _act(self, result: WindowResult, summary: dict[str, Any], partition: int) -> None:
        """Metrics, the latest result, the audit trail, the decision (``summary``: the result
        as ``to_dict`` gives it)."""
        labels = (result.model, result.version)
        self.metrics.windows.labels(*labels, result.status).inc()
        for feature in result.features:
            gauges = (*labels, feature.name)
            self.metrics.statistic.labels(*gauges).set(feature.statistic)
            self.metrics.p_value.labels(*gauges).set(feature.p_value)
            self.metrics.neg_log10_p.labels(*gauges).set(-feature.log10_p)
            self.metrics.psi.labels(*gauges).set(feature.psi)
            self.metrics.psi_threshold.labels(*gauges).set(feature.psi_threshold)
            self.metrics.flagged.labels(*gauges).set(1 if feature.drifted else 0)
        key = f"{result.model}/{result.version}"
        self.latest[key] = summary
        self._audit.append(
            {
                "window_id": result.window_id,
                "partition": partition,
                "model": result.model,
                "version": result.version,
                "status": result.status,
                "rows": result.rows,
                "fingerprint": result.fingerprint(),
                "time": time.time(),
            }
        )
        brief = {
            "id": result.window_id,
            "start_time": result.start_time,
            "end_time": result.end_time,
            "rows": result.rows,
            "drifted_features": result.drifted_features,
        }
        event = self._events.get(key)
        if not self.decider.observe(key, result.status, brief):
            if event is not None and event.open and result.status != "insufficient":
                if result.status == "drift":  # the episode goes on in the same batch
                    event.add(brief)
                else:
                    event.open = False
            return
        self.metrics.decisions.labels(*labels).inc()
        episode = self.decider.states[key].episode
        self._events[key] = _Event(
            partition,
            result.model,
            result.version,
            result.window_id,
            {
                "model": result.model,
                "version": result.version,
                "window": {
                    "id": result.window_id,
                    "start_time": result.start_time,
                    "end_time": result.end_time,
                    "rows": result.rows,
                },
                "decision": "drift",
                "episode": {"windows": list(episode)},
                "drifted_features": _union(w.get("drifted_features", []) for w in episode),
                "features": summary["features"],
            },
        )
        log.warning(
            "drift in %s: %s; notifying %d targets",
            key,
            result.drifted_features,
            len(self.webhooks.targets),
        )


def _union(lists: Iterable[list[str]]) -> list[str]:
    """The names of several lists, each once, in the order first seen."""
    return list(dict.fromkeys(name for names in lists for name in names))


@dataclass
class _Event:
    """A drift event decided in the batch being consumed: still open to later windows of its
    episode until a window that did not drift."""

    partition: int
    model: str
    version: str
    window_id: str
    data: dict[str, Any]
    open: bool = True

    def add(self, window: dict[str, Any]) -> None:
        self.data["episode"]["windows"].append(window)
        self.data["drifted_features"] = _union(
            [self.data["drifted_features"], window["drifted_features"]]
        )


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    """Notes revoked partitions; the loop drops their state (and takes on new ones lazily)."""

    def __init__(self, revoked: set[int], batch_lock: asyncio.Lock, assigned: Gauge) -> None:
        self._revoked = revoked
        self._batch_lock = batch_lock
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._batch_lock:  # the batch in progress is snapshotted and committed first
            self._revoked.update(tp.partition for tp in revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._assigned.set(len(assigned))
