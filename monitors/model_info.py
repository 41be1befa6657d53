"""What the ground-truth join needs of a model version (task, outputs, validation report),
read through the registry client from whichever registry is configured (local folder or MLflow).

Versions are looked up when their first records arrive and cached; a version whose metadata
could not be read (not registered yet, registry unreachable) is looked up again after
``retry_s``, and its records are skipped and counted meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitors.version_cache import VersionCache
from registry_client import ModelMetadata, ValidationReport

__all__ = ["ModelInfo", "ModelInfos"]


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


class ModelInfos(VersionCache[ModelInfo]):
    """The versions' infos, loaded from the registry (async) and read from the cache (sync)."""

    missing = "performance: no metadata"

    @property
    def targets(self) -> dict[str, ModelInfo]:
        """model -> the info of its version read last: the output its labels are for, and the
        class names its class space is fixed from where a join store has none yet
        (``monitors.class_space``)."""
        return self.latest

    async def _read(self, model: str, version: str) -> ModelInfo:
        return ModelInfo.of((await self.registry.fetch(model, version)).metadata)
