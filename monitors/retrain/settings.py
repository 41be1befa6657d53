"""Retraining worker settings: a YAML file, overridden by ``RETRAIN_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from monitors.kafka_security import KafkaSecurity
from monitors.settings import FileSettings, SettingsError, read_settings
from registry_client.settings import RegistrySettings

__all__ = ["RetrainSettings", "SettingsError", "load_settings"]

PRIMARY_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc")


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(KafkaSecurity):
    """Where the training data comes from: the inference log and the feedback topic."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "inference-log"
    feedback_topic: str = "model-feedback"
    # how long a read of the topics may take before the job fails
    read_timeout_s: float = Field(default=120.0, gt=0)


class DatasetSettings(_Group):
    # the event's window(s), this much earlier data too, and what came after them until the job
    # reads (labels come late)
    lookback_s: float = Field(default=3600.0, ge=0)
    min_labelled_rows: int = Field(default=200, ge=1)
    # the newest share of labelled rows, held out for the validation gate
    holdout_fraction: float = Field(default=0.3, gt=0, lt=1)


class ValidationSettings(_Group):
    primary_metric: Literal[
        "accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc"
    ] = "accuracy"
    # the candidate is rejected when its primary metric is below the champion's by more
    margin: float = Field(default=0.0, ge=0)
    # significance level of McNemar's exact test reported beside the metrics
    alpha: float = Field(default=0.05, gt=0, lt=1)


class CanarySettings(_Group):
    """The canary that rolls a registered candidate out through the gateway's admin API
    (``monitors/retrain/rollout.py``; the rule's keys are the gateway's canary rule's)."""

    enabled: bool = True
    gateway_url: str = "http://127.0.0.1:8080"
    admin_token: SecretStr | None = None  # the worker's own admin token
    # the gateway endpoint serving each model (default: the model's name)
    endpoints: dict[str, str] = Field(default_factory=dict)
    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100])
    interval_s: float = Field(default=60.0, gt=0)
    window_s: float = Field(default=60.0, gt=0)
    min_requests: int = Field(default=50, ge=1)
    max_error_rate_increase: float = Field(default=0.01, ge=0)
    max_p99_ratio: float = Field(default=1.5, gt=0)
    min_p99_increase_s: float = Field(default=0.005, ge=0)
    # gate on realized accuracy too: the monitor's A/B verdict, within the margin
    quality_monitor_url: str | None = None
    quality_margin: float = Field(default=0.01, ge=0, le=1)
    timeout_s: float = Field(default=3600.0, gt=0)
    # after promotion, how long the champion variant may take to load the new version
    swap_timeout_s: float = Field(default=300.0, gt=0)


class HttpSettings(_Group):
    host: str = "127.0.0.1"
    port: int = Field(default=8091, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)


class RetrainSettings(FileSettings):
    """Everything the retraining worker reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="RETRAIN_", env_nested_delimiter="__", extra="forbid"
    )

    # the shared secret of the monitor's webhook target (x-signature-256)
    secret: SecretStr
    state_dir: Path = Path("retrain-state")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    registry_root: Path = Path("registry")
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    # ``module:attribute`` (or ``module.attribute``) of a trainer factory, called with options
    trainer: str = "monitors.retrain.demo_model:DemoTrainer"
    trainer_options: dict[str, Any] = Field(default_factory=dict)
    champion_alias: str = "champion"
    # after a candidate is rejected, more events about the same champion version within this
    # long join the rejected job instead of training again on nearly the same data
    rejected_cooldown_s: float = Field(default=600.0, ge=0)
    # a job whose stage finds the registry unreachable keeps its state and tries again after
    registry_retry_s: float = Field(default=30.0, gt=0)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    # events of these types start a job; others are answered 202 and ignored
    event_types: list[str] = Field(
        default_factory=lambda: [
            "io.model-gateway.drift.detected",
            "io.model-gateway.performance.degraded",
        ]
    )

    @model_validator(mode="after")
    def _checks(self) -> RetrainSettings:
        if "root" not in self.registry.model_fields_set:
            self.registry = self.registry.model_copy(update={"root": self.registry_root})
        if not self.secret.get_secret_value():
            raise ValueError("secret must not be empty")
        if self.canary.enabled and self.canary.admin_token is None:
            raise ValueError("canary.admin_token is required when canary.enabled is true")
        return self


def load_settings(path: Path | None = None, **overrides: Any) -> RetrainSettings:
    """Read the YAML file, apply the environment, validate; name what is wrong."""
    return read_settings(RetrainSettings, path, overrides)
