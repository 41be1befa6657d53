"""Training data from production: the inference log joined with feedback labels.

The job reads both topics from ``start`` (the earliest window of its events less the look-back)
to their ends as they were when it began reading, keeps the primary, successful predictions of
the model, and joins each row's features with its label by request id and row.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from monitors.batch import well_formed
from monitors.class_space import ClassLabelError, class_positions, label_class
from monitors.feedback import MAX_FUTURE_S, decode_feedback
from monitors.schema import RecordError, decode_records
from registry_client import ModelMetadata

__all__ = ["Dataset", "DatasetError", "assemble", "read_topic"]


class DatasetError(RuntimeError):
    """The training data could not be read, or is too small to train on."""


@dataclass(frozen=True)
class Dataset:
    """Labelled rows in the order they were served: features (columns in the metadata's order),
    class index per row, and when each was served."""

    features: list[str]
    x: np.ndarray  # (rows, features) float32
    y: np.ndarray  # (rows,) int64
    time: np.ndarray  # (rows,) float64
    class_labels: list[str]
    logged_rows: int
    start: float
    end: float
    # log records of the model skipped as malformed (fields of the wrong type, a row count past
    # MAX_RECORD_ROWS), as the monitor skips them
    malformed: int = 0

    @property
    def rows(self) -> int:
        return len(self.y)

    def summary(self) -> dict[str, Any]:
        return {
            "logged_rows": self.logged_rows,
            "labelled_rows": self.rows,
            "malformed_records": self.malformed,
            "start_time": self.start,
            "end_time": self.end,
            "features": len(self.features),
            "class_counts": np.bincount(self.y, minlength=len(self.class_labels)).tolist(),
        }

    def save(self, path: Path) -> None:
        """Write it atomically (``.npz``), so a restarted worker can train without reading
        again."""
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            x=self.x,
            y=self.y,
            time=self.time,
            features=np.array(self.features, dtype=object),
            class_labels=np.array(self.class_labels, dtype=object),
            meta=np.array(
                [self.logged_rows, self.start, self.end, self.malformed], dtype=np.float64
            ),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Dataset:
        with np.load(path, allow_pickle=True) as data:
            meta = data["meta"]
            return cls(
                features=[str(f) for f in data["features"]],
                x=data["x"],
                y=data["y"],
                time=data["time"],
                class_labels=[str(c) for c in data["class_labels"]],
                logged_rows=int(meta[0]),
                start=float(meta[1]),
                end=float(meta[2]),
                malformed=int(meta[3]) if len(meta) > 3 else 0,
            )

    def split(self, holdout_fraction: float) -> tuple[Dataset, Dataset]:
        """(older rows to train on, the newest ``holdout_fraction`` held out)."""
        order = np.argsort(self.time, kind="stable")
        cut = len(order) - max(1, round(len(order) * holdout_fraction))
        return self._take(order[:cut]), self._take(order[cut:])

    def _take(self, rows: np.ndarray) -> Dataset:
        return Dataset(
            self.features,
            self.x[rows],
            self.y[rows],
            self.time[rows],
            self.class_labels,
            self.logged_rows,
            self.start,
            self.end,
            self.malformed,
        )


async def read_topic(
    bootstrap_servers: str,
    topic: str,
    start: float,
    timeout_s: float,
    options: dict[str, Any],
) -> list[tuple[int, bytes]]:
    """Every message of ``topic`` from the first at or after ``start`` (seconds since the epoch)
    to the topic's end when reading began: (timestamp ms, value)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        **options,
    )
    deadline = time.monotonic() + timeout_s
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        await asyncio.wait_for(consumer.topics(), timeout_s)  # fetches the cluster's metadata
        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise DatasetError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(numbers)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: int(start * 1000) for tp in tps})
        remaining = {}
        for tp in tps:
            offset = found.get(tp)
            first = offset.offset if offset is not None else ends[tp]
            if first < ends[tp]:
                consumer.seek(tp, first)
                remaining[tp] = ends[tp]
        messages: list[tuple[int, bytes]] = []
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatasetError(
                    f"reading {topic!r} took more than {timeout_s:g} s "
                    f"({len(messages)} messages read)"
                )
            batches = await consumer.getmany(*remaining, timeout_ms=int(min(left, 1.0) * 1000))
            for tp, batch in batches.items():
                for message in batch:
                    if message.offset < remaining.get(tp, -1) and message.value is not None:
                        messages.append((message.timestamp, message.value))
            for tp in list(remaining):
                # the position, not the last message: offsets may skip (transaction markers)
                if await consumer.position(tp) >= remaining[tp]:
                    del remaining[tp]
        return messages
    except (KafkaError, TimeoutError, OSError) as exc:
        raise DatasetError(f"reading {topic!r} from {bootstrap_servers}: {exc!r}") from exc
    finally:
        await consumer.stop()


def join(
    model: str,
    metadata: ModelMetadata,
    log: list[tuple[int, bytes]],
    feedback: list[tuple[int, bytes]],
    label_output: str,
    start: float,
    end: float,
) -> Dataset:
    """The labelled rows of ``model``'s primary, successful predictions served in
    [start, end]."""
    names = metadata.feature_names
    if not names:
        raise DatasetError(f"model {model}: its metadata names no features to train on")
    classes = metadata.class_labels or []
    positions = class_positions(classes)
    # A label's rule is the monitor's and the gateway's (monitors.class_space); the count of
    # indices differs on purpose: a model whose metadata names no classes is trained as a
    # binary classifier (the worker and its validation take max(classes, 2)), labels 0 and 1.
    indices = max(len(classes), 2)
    labels: dict[tuple[str, int], int] = {}
    for timestamp, value in feedback:
        labelled, _ = decode_feedback(value, timestamp / 1000)
        for answer in labelled:
            try:
                index = label_class(answer["labels"].get(label_output), positions, indices)
            except ClassLabelError:
                continue  # no label for the output, or none of the model's classes
            labels[(answer["request_id"], answer["row"])] = index
    rows: list[list[float]] = []
    ys: list[int] = []
    times: list[float] = []
    logged = malformed = 0
    for _, value in log:
        try:
            records = decode_records(value)
        except RecordError:
            continue  # the monitor counts these; training skips them
        for record in records:
            if record.get("model") != model:
                continue
            part = record.get("part")
            first = part.get("first_row", 0) if isinstance(part, dict) else part
            first = 0 if first is None else first
            version, count, served = record.get("version"), record.get("rows"), record.get("time")
            if not (
                well_formed(model, version, count, served, end + MAX_FUTURE_S)
                and isinstance(record.get("request_id"), str)
                and type(first) is int
            ):
                malformed += 1
                continue
            if (
                record.get("role") != "primary"
                or record.get("status") != "ok"
                or not start <= record["time"] <= end
            ):
                continue
            features = record.get("features")
            if not isinstance(features, dict) or any(n not in features for n in names):
                continue
            columns = [features[n] for n in names]
            if not all(
                isinstance(c, list | np.ndarray) and len(c) == record["rows"] for c in columns
            ):  # a column of another shape: text would be read a character a row
                malformed += 1
                continue
            for i in range(record["rows"]):
                logged += 1
                label = labels.get((record["request_id"], first + i))
                if label is None:
                    continue
                try:
                    rows.append([float(c[i]) for c in columns])
                except (TypeError, ValueError, IndexError, KeyError):
                    continue
                ys.append(label)
                times.append(record["time"])
    width = len(names)
    return Dataset(
        features=names,
        x=np.array(rows, dtype=np.float32).reshape(-1, width),
        y=np.array(ys, dtype=np.int64),
        time=np.array(times, dtype=np.float64),
        class_labels=classes,
        logged_rows=logged,
        start=start,
        end=end,
        malformed=malformed,
    )


async def assemble(
    model: str,
    metadata: ModelMetadata,
    *,
    bootstrap_servers: str,
    log_topic: str,
    feedback_topic: str,
    start: float,
    label_output: str,
    timeout_s: float,
    options: dict[str, Any],
) -> Dataset:
    """Read both topics from ``start`` and join them (the decoding runs off the event loop)."""
    end = time.time()
    log, feedback = await asyncio.gather(
        read_topic(bootstrap_servers, log_topic, start, timeout_s, options),
        read_topic(bootstrap_servers, feedback_topic, start, timeout_s, options),
    )
    return await asyncio.to_thread(join, model, metadata, log, feedback, label_output, start, end)
