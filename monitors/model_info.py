"""What the ground-truth join needs of a model version (task, outputs, validation report),
read through the registry client from whichever registry is configured (local folder or MLflow).

Versions are looked up when their first records arrive and cached; a version whose metadata
could not be read (not registered yet, registry unreachable) is looked up again after
``retry_s``, and its records are skipped and counted meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from registry_client import ModelMetadata, Registry, RegistryError, ValidationReport

__all__ = ["ModelInfo", "ModelInfos"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the join needs of a model version: its task, outputs and validation report."""

    classes: int  # 0: a regressor
    class_labels: list[str]
    label_output: str | None  # None: the record's first output
    score_output: str | None
    validation: ValidationReport | None

    @classmethod
    def of(cls, metadata: ModelMetadata) -> ModelInfo:
        report = metadata.validation
        labels = metadata.class_labels or []
        classification = report.task == "classification" if report else bool(labels)
        return cls(
            classes=len(labels) if classification else 0,
            class_labels=labels,
            label_output=report.label_output if report else None,
            score_output=report.score_output if report else None,
            validation=report,
        )


class ModelInfos:
    """The versions' infos, loaded from the registry (async) and read from the cache (sync)."""

    def __init__(
        self,
        registry: Registry,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._retry_s = retry_s
        self._clock = clock
        self._found: dict[tuple[str, str], ModelInfo] = {}
        self._look_again: dict[tuple[str, str], float] = {}
        self.targets: dict[str, ModelInfo] = {}  # model -> a version's info, for its labels

    def get(self, model: str, version: str) -> ModelInfo | None:
        """The cached info of a version (``load`` it first)."""
        return self._found.get((model, version))

    async def load(self, model: str, version: str) -> ModelInfo | None:
        """The version's info, from the cache or the registry; None when it cannot be read."""
        key = (model, version)
        if key in self._found:
            return self._found[key]
        if self._clock() < self._look_again.get(key, float("-inf")):
            return None
        try:
            info = ModelInfo.of((await self.registry.fetch(model, version)).metadata)
        except (RegistryError, ValidationError, ValueError, OSError) as exc:
            log.error("performance: no metadata for %s/%s: %s", model, version, exc)
            self._look_again[key] = self._clock() + self._retry_s
            return None
        self._look_again.pop(key, None)
        self._found[key] = self.targets[model] = info
        return info

    async def aclose(self) -> None:
        await self.registry.aclose()
