"""Ground truth in: check feedback items against the model's outputs and log them to the
feedback topic. Nothing here knows HTTP; the endpoint answers 202 once the items are queued.

An item: ``{"id": request id, "row"?: 0, "label"?: value, "labels"?: {output: value},
"time"?: seconds since the epoch, "source"?: text}``. ``label`` is the value of the model's
first output (a classifier's predicted label); ``labels`` names outputs. A classifier's label
may be given as a class name from the primary version's ``class_labels`` (those the model's
metadata shows) or as its index there; it is logged as the class name. An index means a class
only in one version's order, and the label may be for a request another variant served, whose
version orders (or has) other classes: the name means the same class to every version, and the
monitor maps it into the model's class space by name (``monitors.class_space``).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidInputError
from gateway.featurelog import FeatureLog
from gateway.metrics import GatewayMetrics
from gateway.serving import LoadedModel
from gateway.traffic import Traffic
from monitors.feedback import (
    FEEDBACK_SCHEMA,
    FeedbackRecord,
    id_problem,
    labels_problem,
    row_problem,
    source_problem,
    time_problem,
)

__all__ = ["FeedbackDisabledError", "FeedbackService"]

_ITEM_KEYS = frozenset(("id", "row", "label", "labels", "time", "source"))


class FeedbackDisabledError(GatewayError):
    """The gateway runs without a feedback topic (``feedback.enabled`` is off)."""


class FeedbackService:
    """Validates feedback and puts it on the feedback log (never blocks; drops are counted)."""

    def __init__(
        self,
        traffic: Traffic,
        feedback_log: FeatureLog[FeedbackRecord],
        metrics: GatewayMetrics,
        max_items: int,
    ) -> None:
        self.traffic = traffic
        self._log = feedback_log
        self._metrics = metrics
        self._max_items = max_items

    def check(self, endpoint: str, body: bytes, now: float) -> list[FeedbackRecord]:
        """Every item of a single or bulk (``{"items": [...]}``) body as a record; raises
        InvalidInputError naming the first bad item, UnknownModelError or NotReadyError. It only
        reads, so a large body is checked on a worker thread."""
        model = self.traffic.primary(endpoint)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInputError(f"feedback body is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise InvalidInputError('feedback body must be an object: an item or {"items": [...]}')
        if "id" in doc or "items" not in doc:
            items: object = [doc]
        elif len(doc) > 1:  # a "source" or "time" here would apply to no item
            raise InvalidInputError(
                f"a bulk body has only items, not {sorted(set(doc) - {'items'})}"
            )
        else:
            items = doc["items"]
        if not isinstance(items, list) or not items:
            raise InvalidInputError("items must be a non-empty list")
        if len(items) > self._max_items:
            raise InvalidInputError(f"{len(items)} items, at most {self._max_items} per request")
        checker = _Checker(model)
        try:
            records = [checker.record(endpoint, i, item, now) for i, item in enumerate(items)]
        except InvalidInputError:
            self._metrics.feedback_items.labels(endpoint, "invalid").inc(len(items))
            raise
        return records

    def log(self, endpoint: str, records: list[FeedbackRecord]) -> int:
        """Put checked records on the feedback log (on the event loop); returns how many."""
        key = endpoint.encode()
        for record in records:
            self._log.submit(key, record)
        self._metrics.feedback_items.labels(endpoint, "accepted").inc(len(records))
        return len(records)


class _Checker:
    """One model's output names and class labels, for checking items."""

    def __init__(self, model: LoadedModel) -> None:
        outputs = model.signature.outputs
        # outputs with one value per row: those can have a true value
        self.outputs = [o.name for o in outputs if len(o.shape) <= 1 or o.shape[1:] in ((1,), ())]
        self.first = outputs[0].name
        self.classes = model.metadata.class_labels or None
        self.known = frozenset(self.classes or ())
        # (id, row) -> the first item of the body that labels it, and its labels
        self.seen: dict[tuple[str, int], tuple[int, dict[str, int | float | str]]] = {}

    def record(self, endpoint: str, index: int, item: Any, now: float) -> FeedbackRecord:
        where = f"item {index}"
        if not isinstance(item, dict):
            raise InvalidInputError(f"{where}: an item is an object with id and label(s)")
        unknown = set(item) - _ITEM_KEYS
        if unknown:
            raise InvalidInputError(f"{where}: unknown keys {sorted(unknown)}")
        # The rules the monitor's reader applies too are monitors.feedback's, one code for both;
        # which outputs take labels, and class names, are this side's alone.
        problem = id_problem(item.get("id"), "id") or row_problem(item.get("row", 0))
        if problem is not None:
            raise InvalidInputError(f"{where}: {problem}")
        request_id: str = item["id"]
        row: int = item.get("row", 0)
        if ("label" in item) == ("labels" in item):
            raise InvalidInputError(f"{where}: give either label or labels")
        given = item["labels"] if "labels" in item else {self.first: item["label"]}
        problem = labels_problem(given)
        if problem is not None:
            raise InvalidInputError(f"{where}: {problem}")
        labels: dict[str, int | float | str] = {}
        for output, value in given.items():
            if output not in self.outputs:
                raise InvalidInputError(
                    f"{where}: {output!r} is not an output that takes labels ({self.outputs})"
                )
            labels[output] = self._value(where, output, value)
        first, first_labels = self.seen.setdefault((request_id, row), (index, labels))
        if first_labels != labels:  # the monitor would keep the first and drop this one
            raise InvalidInputError(
                f"{where}: row {row} of id {request_id!r} has other labels in item {first}"
            )
        source = item.get("source")
        time = item.get("time", now)
        problem = source_problem(source) or time_problem(time, now)
        if problem is not None:
            raise InvalidInputError(f"{where}: {problem}")
        record: FeedbackRecord = {
            "schema": FEEDBACK_SCHEMA,
            "model": endpoint,
            "request_id": request_id,
            "row": row,
            "labels": labels,
            "time": float(time),
        }
        if source is not None:
            record["source"] = source
        return record

    def _value(self, where: str, output: str, value: int | float | str) -> int | float | str:
        """The value to log for a label that passed ``label_problem``: for a classifier's label
        output the class's name (an index is the primary's class at it), which means the same
        class to every version; otherwise the number."""
        if self.classes is not None and output == self.first:
            if isinstance(value, str):
                if value not in self.known:
                    raise InvalidInputError(
                        f"{where}: unknown class {value!r}; the classes are {self.classes}"
                    )
                return value
            if value != int(value) or not 0 <= value < len(self.classes):
                raise InvalidInputError(
                    f"{where}: class index {value!r} out of range 0..{len(self.classes) - 1}"
                )
            return self.classes[int(value)]
        if isinstance(value, str):
            raise InvalidInputError(
                f"{where}: label of {output!r} must be a number: the output has no class names"
            )
        return value
