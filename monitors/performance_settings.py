"""Settings of the ground-truth side of the monitor (``performance.*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from monitors.abtest import AB_METRICS

__all__ = ["ABSettings", "PerformanceSettings", "PerformanceWindowSettings"]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PerformanceWindowSettings(_Group):
    # Windows of prediction time (a window's rows are the predictions made in it, judged
    # ``settle_s`` after it ends, so late labels count), or of label arrival time.
    by: Literal["prediction", "label"] = "prediction"
    size_s: float = Field(default=3600.0, gt=0)
    settle_s: float = Field(default=3600.0, ge=0)


class ABSettings(_Group):
    # The metric variants are compared on: "primary" (each version's metadata names it, by
    # default accuracy for classifiers and MAE for regressors) or one of ``AB_METRICS``.
    metric: str = "primary"
    alpha: float = Field(default=0.05, gt=0, lt=1)
    # The mixture's scale: the difference (in the metric's units) the test finds fastest.
    tau: float = Field(default=0.03, gt=0)
    # Labelled rows each variant needs before the first look.
    min_samples: int = Field(default=100, ge=1)
    # The difference "samples needed" is computed for while the estimate is smaller.
    min_effect: float = Field(default=0.02, gt=0)

    @field_validator("metric")
    @classmethod
    def _supported(cls, metric: str) -> str:
        if metric != "primary" and metric not in AB_METRICS:
            raise ValueError(
                f"performance.ab.metric {metric!r} has no sequential A/B test; use 'primary' "
                f"or one of {', '.join(AB_METRICS)} (F1, ROC AUC and R2 are not means of "
                "per-row quantities)"
            )
        return metric


class PerformanceSettings(_Group):
    enabled: bool = False
    feedback_topic: str = "model-feedback"
    group_id: str = "performance-monitor"
    window: PerformanceWindowSettings = Field(default_factory=PerformanceWindowSettings)
    # Predictions are kept this long (event time) for labels to find them.
    horizon_s: float = Field(default=7 * 86400.0, gt=0)
    # A label whose prediction has not been read after this long (on the slower of the two
    # topics' clocks) counts as unknown.
    label_wait_s: float = Field(default=3600.0, ge=0)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    # Degradation: the metric (per task), how far below validation counts, and hysteresis.
    classification_metric: Literal[
        "accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc", "log_loss"
    ] = "accuracy"
    regression_metric: Literal["mae", "rmse", "r2"] = "mae"
    margin: float = Field(default=0.02, ge=0)
    min_labels: int = Field(default=30, ge=1)
    consecutive: int = Field(default=2, ge=1)
    cooldown_windows: int = Field(default=10, ge=0)
    ab: ABSettings = Field(default_factory=ABSettings)

    @model_validator(mode="after")
    def _horizon(self) -> PerformanceSettings:
        if self.horizon_s <= self.window.size_s + self.window.settle_s:
            raise ValueError(
                "performance.horizon_s must exceed window.size_s + window.settle_s (a window's "
                "predictions must still be held when it is judged)"
            )
        return self
