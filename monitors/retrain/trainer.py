"""The pluggable trainer: ``train(dataset) -> TrainedModel`` (ONNX bytes and metadata).

A trainer is named in the settings by a dotted path, ``package.module:Factory`` (or
``package.module.Factory``); the factory is called with ``trainer_options`` as keyword arguments
and returns an object with a ``train`` method. Training runs in a worker thread, so a trainer
may block (fit a model, call out to a training service and wait).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from monitors.retrain.dataset import Dataset
from registry_client import ModelMetadata

__all__ = ["TrainedModel", "Trainer", "TrainerError", "load_trainer"]


class TrainerError(RuntimeError):
    """The trainer could not be loaded, or training failed; the message says why."""


@dataclass(frozen=True)
class TrainedModel:
    """A candidate: its ONNX graph, its metadata (features as the champion's, class labels, the
    reference profile of its training data), and what the trainer wants to report."""

    onnx: bytes
    metadata: ModelMetadata
    info: dict[str, Any] = field(default_factory=dict)


class Trainer(Protocol):
    def train(self, dataset: Dataset, template: ModelMetadata) -> TrainedModel:
        """Fit a model on ``dataset``; ``template`` is the champion's metadata (features, their
        input, class labels) for the candidate to keep."""
        ...


def load_trainer(path: str, options: dict[str, Any]) -> Trainer:
    """The trainer a dotted path names, made with ``options``."""
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise TrainerError(f"trainer {path!r}: expected 'package.module:Factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainerError(f"trainer {path!r}: cannot import {module_name}: {exc}") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise TrainerError(f"trainer {path!r}: {module_name} has no callable {attribute!r}")
    try:
        trainer = factory(**options)
    except TypeError as exc:
        raise TrainerError(f"trainer {path!r}: trainer_options do not fit: {exc}") from exc
    if not callable(getattr(trainer, "train", None)):
        raise TrainerError(f"trainer {path!r}: what it makes has no train(dataset, template)")
    return trainer  # type: ignore[no-any-return]
