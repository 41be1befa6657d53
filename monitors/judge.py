"""Judging one closed window of a model: realized metrics per stream (version and variant)
beside the label-free estimate, the degradation decision, and the A/B looks between variants.

Every state it changes (decision states, A/B totals, latest results) lives in the partition's
join store and is committed with the offsets, so a restart neither loses nor repeats a look.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitors.abtest import ABState, UnsupportedMetricError, ab_groups, check_metric, look
from monitors.decision import Decider, DecisionState
from monitors.estimate import estimate_classification
from monitors.join import JoinStore, Stream
from monitors.labels import OTHER
from monitors.performance import classification_metrics, degraded, regression_metrics
from monitors.performance_settings import PerformanceSettings
from registry_client import ValidationReport

__all__ = ["Degradation", "WindowJudge", "stream_key"]

_RECENT = 20


def stream_key(stream: Stream) -> str:
    return f"{stream.model}/{stream.version}/{stream.variant}"


@dataclass(frozen=True)
class Degradation:
    """A stream whose realized metric fell below its validation value for long enough."""

    stream: Stream
    window_id: str
    data: dict[str, Any]

    @property
    def event_key(self) -> str:
        return hashlib.sha256(self.window_id.encode()).hexdigest()[:16]


class WindowJudge:
    """Judges windows on one partition's store; ``validation`` gives a version's report."""

    def __init__(self, settings: PerformanceSettings, store: JoinStore) -> None:
        self.settings = settings
        self.store = store
        states = store.get("decisions", {})
        self.decider = Decider(settings.consecutive, settings.cooldown_windows)
        self.decider.states = {k: DecisionState(**v) for k, v in states.items()}
        self.ab = {k: ABState.from_dict(v) for k, v in store.get("ab", {}).items()}
        self.verdicts: dict[str, dict[str, Any]] = store.get("verdicts", {})
        self.latest: dict[str, list[dict[str, Any]]] = store.get("latest", {})

    def save(self) -> None:
        """Put the judge's state in the store (committed with the next offsets)."""
        self.store.put("decisions", {k: v.to_dict() for k, v in self.decider.states.items()})
        self.store.put("ab", {k: v.to_dict() for k, v in self.ab.items()})
        self.store.put("verdicts", self.verdicts)
        self.store.put("latest", self.latest)

    def judge(
        self,
        model: str,
        window: int,
        streams: list[Stream],
        validation: dict[tuple[str, str], ValidationReport | None],
    ) -> list[Degradation]:
        """Evaluate window number ``window`` of every stream of ``model``; returns the streams
        whose degradation episode this window completes."""
        size = self.settings.window.size_s
        start, end = window * size, (window + 1) * size
        found: list[Degradation] = []
        labelled: dict[Stream, _Labelled] = {}
        for stream in streams:
            predicted, pred, label, probs, all_probs = self.store.window(
                stream, self.settings.window.by, start, end
            )
            if predicted == 0:
                continue
            window_id = f"{stream_key(stream)}/w{window}"
            report = validation.get((stream.model, stream.version))
            result = self._metrics(stream, pred, label, probs, all_probs, report)
            result.update(
                window_id=window_id, start_time=start, end_time=end, predictions=predicted,
                labels=len(label), coverage=len(label) / predicted,
            )  # fmt: skip
            degradation = self._degradation(stream, window_id, result, report)
            if degradation is not None:
                found.append(degradation)
            recent = self.latest.setdefault(stream_key(stream), [])
            recent.append(result)
            del recent[:-_RECENT]
            if len(label):
                labelled[stream] = _labelled(stream, pred, label, probs)
        self._ab(model, labelled, validation)
        return found

    def _metrics(
        self,
        stream: Stream,
        pred: np.ndarray,
        label: np.ndarray,
        probs: np.ndarray | None,
        all_probs: np.ndarray,
        report: ValidationReport | None,
    ) -> dict[str, Any]:
        alpha = self.settings.alpha
        if not stream.classes:
            return {"realized": regression_metrics(label, pred, alpha)}
        known = (label >= 0) & (label < stream.classes) & (label == np.round(label))
        if probs is not None and not np.isfinite(probs).all():
            probs = None
        realized = classification_metrics(
            label[known], pred[known], None if probs is None else probs[known], stream.classes,
            alpha,
        )  # fmt: skip
        result: dict[str, Any] = {"realized": realized}
        if all_probs.size and np.isfinite(all_probs).all():
            calibration = report.calibration if report is not None else None
            result["estimated"] = estimate_classification(all_probs, calibration, alpha)
        return result

    def _degradation(
        self,
        stream: Stream,
        window_id: str,
        result: dict[str, Any],
        report: ValidationReport | None,
    ) -> Degradation | None:
        settings = self.settings
        metric = settings.classification_metric if stream.classes else settings.regression_metric
        key = f"{stream_key(stream)}:{metric}"
        reference = report.metrics.get(metric) if report is not None else None
        verdict = None
        if reference is not None and result["labels"] >= settings.min_labels:
            verdict = degraded(result["realized"], metric, reference, settings.margin)
        result["degradation"] = {"metric": metric, "validation": reference, "degraded": verdict}
        # the drift decider's hysteresis and cooldown, on "degraded" windows
        status = "insufficient" if verdict is None else ("drift" if verdict else "ok")
        if not self.decider.observe(key, status):
            return None
        data = {
            "model": stream.model,
            "version": stream.version,
            "variant": stream.variant,
            "window": {k: result[k] for k in ("window_id", "start_time", "end_time")},
            "decision": "degraded",
            "metric": metric,
            "validation": reference,
            "margin": settings.margin,
            "realized": result["realized"].get(metric),
            "labels": result["labels"],
            "coverage": result["coverage"],
        }
        return Degradation(stream, window_id, data)

    def _ab(
        self,
        model: str,
        labelled: dict[Stream, _Labelled],
        validation: dict[tuple[str, str], ValidationReport | None],
    ) -> None:
        """One look for every pair of the model's variants that both have labels this window.

        The ``OTHER`` streams (variants past the join's bound, pooled) are in no pair: a
        verdict against a mix of unnamed variants answers nobody's question."""
        ab = self.settings.ab
        streams = sorted(
            (s for s in labelled if s.variant != OTHER), key=lambda s: (s.variant, s.version)
        )
        pairs = self.verdicts.setdefault(model, {})
        for i, a in enumerate(streams):
            for b in streams[i + 1 :]:
                if a.variant == b.variant or bool(a.classes) != bool(b.classes):
                    continue
                key = f"{a.variant}/{a.version}|{b.variant}/{b.version}"
                sides = {
                    "a": {"variant": a.variant, "version": a.version},
                    "b": {"variant": b.variant, "version": b.version},
                }
                try:
                    metric = self._metric(a, b, validation)
                except UnsupportedMetricError as exc:
                    pairs[key] = {**sides, "metric": None, "error": str(exc),
                                  "decision": "no_difference_yet"}  # fmt: skip
                    continue
                add_a, add_b = (ab_groups(metric, *labelled[s], s.classes) for s in (a, b))
                if add_a is None or add_b is None:
                    continue  # the window lacks the metric's input (probabilities)
                state = self.ab.get(f"{model}|{key}")
                if state is None or state.metric != metric:
                    state = self.ab[f"{model}|{key}"] = ABState(metric)
                verdict = look(
                    state, add_a, add_b, alpha=ab.alpha, tau=ab.tau,
                    min_samples=ab.min_samples, min_effect=ab.min_effect,
                )  # fmt: skip
                pairs[key] = {**sides, **verdict.to_dict()}

    def _metric(
        self, a: Stream, b: Stream, validation: dict[tuple[str, str], ValidationReport | None]
    ) -> str:
        """The pair's metric: the one configured, or the versions' primary metric."""
        if self.settings.ab.metric != "primary":
            return self.settings.ab.metric
        default = "accuracy" if a.classes else "mae"
        named = {
            report.primary if report is not None else default
            for report in (validation.get((s.model, s.version)) for s in (a, b))
        }
        if len(named) > 1:
            raise UnsupportedMetricError(
                f"the versions' primary metrics differ ({', '.join(sorted(named))}): set "
                "performance.ab.metric to compare them"
            )
        return check_metric(named.pop())


_Labelled = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # labels, predictions, probs


def _labelled(
    stream: Stream, pred: np.ndarray, label: np.ndarray, probs: np.ndarray | None
) -> _Labelled:
    """A window's labelled rows the A/B test can use (a classifier's: known classes only)."""
    if not stream.classes:
        return label, pred, None
    known = (label >= 0) & (label < stream.classes) & (label == np.round(label))
    if probs is not None and not np.isfinite(probs).all():
        probs = None
    return label[known], pred[known], None if probs is None else probs[known]
