"""Ground truth in: check feedback items against the model's outputs and log them to the
feedback topic. Nothing here knows HTTP; the endpoint answers 202 once the items are queued.

An item: ``{"id": request id, "row"?: 0, "label"?: value, "labels"?: {output: value},
"time"?: seconds since the epoch, "source"?: text}``. ``label`` is the value of the primary
version's first output (a classifier's predicted label); ``labels`` names outputs, any output
with one value per row of a version the endpoint routes to (variants and shadows).

A label may be for a request any of those versions served, and they may have other classes (a
retrained classifier that gained one, on canary) or order them otherwise. So a classifier's
label is a class name any routed version lists for that output (its first), or an index that
means one class to every routed version that has it; an index on which they differ is refused
(give the name: taking the primary's class there would mislabel the rows another variant served,
in silence). Either is logged as the class name, which means the same class to every version;
the monitor maps it into the model's class space by name (``monitors.class_space``), and skips
and counts a class its space lacks (``no_usable_label``). Outputs and classes are read from the
versions' metadata once per set of routed versions, not per item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidInputError
from gateway.featurelog import FeatureLog
from gateway.metrics import GatewayMetrics
from gateway.serving import LoadedModel
from gateway.traffic import Traffic
from monitors.class_space import ClassLabelError, class_positions, label_class
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
        # endpoint -> what its routed versions take as labels (a worker thread may set one too)
        self._specs: dict[str, _Outputs] = {}

    def check(self, endpoint: str, body: bytes, now: float) -> list[FeedbackRecord]:
        """Every item of a single or bulk (``{"items": [...]}``) body as a record; raises
        InvalidInputError naming the first bad item, UnknownModelError or NotReadyError. It only
        reads, so a large body is checked on a worker thread."""
        spec = self._outputs(endpoint)
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
        checker = _Checker(spec)
        try:
            records = [checker.record(endpoint, i, item, now) for i, item in enumerate(items)]
        except InvalidInputError:
            self._metrics.feedback_items.labels(endpoint, "invalid").inc(len(items))
            raise
        return records

    def _outputs(self, endpoint: str) -> _Outputs:
        """The outputs and classes of the versions the endpoint routes to now, built again only
        when they change (a route change, an alias that moved)."""
        models = self.traffic.versions(endpoint)
        cached = self._specs.get(endpoint)
        if cached is not None and cached.served == _served(models):
            return cached
        spec = self._specs[endpoint] = _Outputs.of(models)
        return spec

    def log(self, endpoint: str, records: list[FeedbackRecord]) -> int:
        """Put checked records on the feedback log (on the event loop); returns how many."""
        key = endpoint.encode()
        for record in records:
            self._log.submit(key, record)
        self._metrics.feedback_items.labels(endpoint, "accepted").inc(len(records))
        return len(records)


@dataclass(frozen=True, slots=True)
class _Classes:
    """One label output's classes in the routed versions that name classes for it."""

    names: dict[str, int]  # every such version's, the primary's first: what a name may be
    # index -> the class every version with that index lists there (None: they differ)
    at: tuple[str | None, ...]
    orders: tuple[tuple[str, tuple[str, ...]], ...]  # (which version, its classes), to explain

    @classmethod
    def of(cls, orders: list[tuple[str, tuple[str, ...]]]) -> _Classes:
        names = class_positions([name for _, order in orders for name in order])
        at: list[str | None] = []
        for i in range(max(len(order) for _, order in orders)):
            there = {order[i] for _, order in orders if i < len(order)}
            at.append(there.pop() if len(there) == 1 else None)
        return cls(names, tuple(at), tuple(orders))

    def name(self, where: str, value: int | float | str) -> str:
        """The class a label names (a name, or an index every routed version agrees on)."""
        # A label's rule is the monitor's (monitors.class_space), one code for both. What differs
        # here on purpose: the routed versions may order their classes otherwise, so a name is
        # looked up among all of theirs, and an index means a class only where every version
        # that has it lists the same one (the monitor reads an index in its one class space).
        try:
            index = label_class(value, self.names, len(self.at))
        except ClassLabelError as exc:
            raise InvalidInputError(f"{where}: {exc}") from None
        if isinstance(value, str):
            return value
        name = self.at[index]
        if name is None:
            differ = ", ".join(f"{o[index]!r} to {who}" for who, o in self.orders if index < len(o))
            raise InvalidInputError(
                f"{where}: class index {index} means {differ}; give the class name"
            )
        return name


@dataclass(frozen=True, slots=True)
class _Outputs:
    """What the versions an endpoint routes to take as labels; built once per set of versions."""

    served: tuple[tuple[str, str, str], ...]  # (variant, ref, version) of each: the cache key
    outputs: tuple[str, ...]  # outputs with one value per row (those can have a true value)
    first: str  # the primary's first output: what ``label`` is
    classes: dict[str, _Classes]  # a classifier's label output (its first) -> its classes

    @classmethod
    def of(cls, models: list[LoadedModel]) -> _Outputs:
        """The outputs and classes of ``models``, the primary first."""
        outputs: dict[str, None] = {}
        orders: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for model in models:
            specs = model.signature.outputs
            for o in specs:
                if len(o.shape) <= 1 or o.shape[1:] in ((1,), ()):
                    outputs.setdefault(o.name)
            if model.metadata.class_labels:
                who = f"{model.variant!r} (version {model.version})"
                orders.setdefault(specs[0].name, []).append(
                    (who, tuple(model.metadata.class_labels))
                )
        return cls(
            served=_served(models),
            outputs=tuple(outputs),
            first=models[0].signature.outputs[0].name,
            classes={output: _Classes.of(versions) for output, versions in orders.items()},
        )


def _served(models: list[LoadedModel]) -> tuple[tuple[str, str, str], ...]:
    # a registry version's metadata never changes: these name the classes and outputs
    return tuple((m.variant, str(m.ref), m.version) for m in models)


class _Checker:
    """Checks the items of one body against the outputs and classes of the routed versions."""

    def __init__(self, spec: _Outputs) -> None:
        self.spec = spec
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
        given = item["labels"] if "labels" in item else {self.spec.first: item["label"]}
        problem = labels_problem(given)
        if problem is not None:
            raise InvalidInputError(f"{where}: {problem}")
        labels: dict[str, int | float | str] = {}
        for output, value in given.items():
            if output not in self.spec.outputs:
                raise InvalidInputError(
                    f"{where}: {output!r} is not an output that takes labels "
                    f"({list(self.spec.outputs)})"
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
        output the class's name, which means the same class to every version; otherwise the
        number."""
        classes = self.spec.classes.get(output)
        if classes is not None:
            return classes.name(where, value)
        if isinstance(value, str):
            raise InvalidInputError(
                f"{where}: label of {output!r} must be a number: the output has no class names"
            )
        return value
