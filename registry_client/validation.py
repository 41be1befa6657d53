"""A model version's validation report: how it did on held-out data when it was registered.

The monitor compares realized performance with it (degradation) and calibrates its label-free
estimate with ``calibration``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Calibration", "ValidationReport"]


class Calibration(BaseModel):
    """Per class, the observed frequency of the class among held-out rows whose predicted
    probability of it fell in each bin (``edges`` over [0, 1]): a reliability table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    edges: list[float] = Field(min_length=2)
    rates: list[list[float]]  # class -> bin -> observed frequency (NaN-free; empty bins: centre)
    # class -> bin -> held-out rows behind the rate: the table's own error enters the estimate's
    # interval (a table without counts gives an interval of the sampling error only)
    counts: list[list[int]] | None = None
    # class -> bin -> mean predicted probability of the bin's rows (where the rate was seen;
    # without it, the bins' centres)
    means: list[list[float]] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Calibration:
        if any(len(r) != len(self.edges) - 1 for r in self.rates):
            raise ValueError("calibration: each class needs one rate per bin")
        if self.counts is not None and (
            len(self.counts) != len(self.rates)
            or any(len(c) != len(self.edges) - 1 or min(c) < 0 for c in self.counts)
        ):
            raise ValueError("calibration: counts need one non-negative count per class and bin")
        if self.means is not None and (
            len(self.means) != len(self.rates)
            or any(len(m) != len(self.edges) - 1 for m in self.means)
        ):
            raise ValueError("calibration: means need one value per class and bin")
        return self


_METRICS = {
    "classification": (
        "accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc", "log_loss",
    ),
    "regression": ("mae", "rmse", "r2"),
}  # fmt: skip


class ValidationReport(BaseModel):
    """Metrics on a held-out set, and which outputs the labels and the scores are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["classification", "regression"]
    label_output: str = "label"
    score_output: str | None = None  # a classifier's class probabilities, one column per class
    rows: int = Field(ge=1)
    # classification: accuracy, macro_precision, macro_recall, macro_f1, roc_auc, log_loss;
    # regression: mae, rmse, r2
    metrics: dict[str, float]
    calibration: Calibration | None = None
    # The metric the version is judged on first (A/B verdicts compare variants on it unless
    # the monitor names one): by default accuracy for a classifier, MAE for a regressor.
    primary_metric: str | None = None

    @model_validator(mode="after")
    def _primary(self) -> ValidationReport:
        known = _METRICS[self.task]
        if self.primary_metric is not None and self.primary_metric not in known:
            raise ValueError(
                f"validation.primary_metric {self.primary_metric!r} is not a {self.task} "
                f"metric; one of {', '.join(known)}"
            )
        return self

    @property
    def primary(self) -> str:
        """The primary metric, or the task's default."""
        return self.primary_metric or _METRICS[self.task][0]
