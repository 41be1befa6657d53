"""Trainers the tests name by dotted path: a worse one, and one that waits to be killed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from monitors.retrain.dataset import Dataset
from monitors.retrain.demo_model import DemoTrainer
from monitors.retrain.trainer import TrainedModel
from registry_client import ModelMetadata


class FlippedTrainer(DemoTrainer):
    """Learns the opposite of every label: a candidate far worse than any champion."""

    def labels(self, dataset: Dataset) -> np.ndarray:
        return 1 - dataset.y


class BlockingTrainer(DemoTrainer):
    """Writes ``<marker>`` and then, while ``<marker>.block`` exists, waits: a test kills the
    worker in between and removes the block before restarting it."""

    def __init__(self, marker: str, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.marker = Path(marker)

    def train(self, dataset: Dataset, template: ModelMetadata) -> TrainedModel:
        with self.marker.open("a") as fh:
            fh.write(f"{os.getpid()}\n")
        block = self.marker.with_name(self.marker.name + ".block")
        deadline = time.monotonic() + 120
        while block.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # a file is the only signal across the kill
        return super().train(dataset, template)


class AnyClassTrainer(DemoTrainer):
    """Fits whatever rows it gets, one class included (as some libraries do): a lone far-off
    row of the other class is added, so the model answers the one class for every real row."""

    def train(self, dataset: Dataset, template: ModelMetadata) -> TrainedModel:
        if len(np.unique(dataset.y)) > 1:
            return super().train(dataset, template)
        far = np.full((1, dataset.x.shape[1]), -1e3, dtype=dataset.x.dtype)
        padded = Dataset(
            dataset.features,
            np.vstack([dataset.x, far]),
            np.append(dataset.y, 1 - dataset.y[0]),
            np.append(dataset.time, dataset.time.max()),
            dataset.class_labels,
            dataset.logged_rows,
            dataset.start,
            dataset.end,
        )
        return super().train(padded, template)
