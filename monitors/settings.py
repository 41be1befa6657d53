"""Monitor settings: a YAML (or TOML) file, overridden by ``MONITOR_*`` environment variables."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from monitors.kafka_security import KafkaSecurity
from monitors.performance_settings import PerformanceSettings
from registry_client.settings import RegistrySettings

__all__ = ["FileSettings", "MonitorSettings", "SettingsError", "load_settings", "read_settings"]


class SettingsError(ValueError):
    """The monitor's configuration is invalid; the message names the setting."""


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChangelogSettings(_Group):
    """The compacted topic that holds each partition's latest snapshot (monitors/changelog.py)."""

    # None: "<group_id>-state-changelog"
    topic: str | None = None
    create: bool = True  # create it (cleanup.policy=compact) when it is missing
    replication_factor: int = Field(default=3, ge=1)
    partitions: int | None = Field(default=None, ge=1)  # None: as many as the inference log
    # A snapshot record never exceeds this (the broker's message.max.bytes, 1 MB by default);
    # a larger snapshot is split into chunks.
    max_message_bytes: int = Field(default=1_000_000, ge=4096)
    timeout_s: float = Field(default=60.0, gt=0)  # for a write's acknowledgement, and a restore


class KafkaSettings(KafkaSecurity):
    """The inference-log topic, the consumer group, and the cluster's security."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "inference-log"
    group_id: str = "drift-monitor"
    max_batch_records: int = Field(default=5000, ge=1)
    # How soon the group notices an instance that died (its partitions move after this).
    session_timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    changelog: ChangelogSettings = Field(default_factory=ChangelogSettings)

    @property
    def changelog_topic(self) -> str:
        return self.changelog.topic or f"{self.group_id}-state-changelog"


class WindowSettings(_Group):
    by: Literal["count", "time"] = "count"
    size: float = Field(default=5000, gt=0)  # rows, or seconds
    slide: float = Field(default=5000, gt=0)
    lateness_s: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _whole_panes(self) -> WindowSettings:
        """A window is a whole number of slides (panes); rows are whole. Otherwise the windows
        were silently of another size (1000 by 400: 800 rows), and a count slide under 1 hung."""
        if self.by == "count" and not all(float(v).is_integer() for v in (self.size, self.slide)):
            raise ValueError(
                f"window.size and window.slide count rows (by: count): whole numbers, "
                f"not {self.size:g} and {self.slide:g}"
            )
        panes = self.size / self.slide
        if panes < 1 or abs(panes - round(panes)) > 1e-9 * panes:
            raise ValueError(
                f"window.size ({self.size:g}) must be a whole multiple of window.slide "
                f"({self.slide:g}): a window is a run of whole slides"
            )
        return self


class DetectorSettings(_Group):
    alpha: float = Field(default=0.05, gt=0, lt=1)
    correction: Literal["bh", "bonferroni"] = "bh"
    psi_threshold: float = Field(default=0.1, ge=0)
    js_threshold: float = Field(default=0.1, ge=0)
    wasserstein_threshold: float = Field(default=0.1, ge=0)
    min_rows: int = Field(default=200, ge=1)
    max_missing_increase: float = Field(default=0.05, ge=0)
    max_unseen_share: float = Field(default=0.05, ge=0)
    min_drifted_features: int = Field(default=1, ge=1)


class DecisionSettings(_Group):
    consecutive: int = Field(default=2, ge=1)
    cooldown_windows: int = Field(default=10, ge=0)


class HistorySettings(_Group):
    # evaluated windows kept per model version (state_dir/history), for /windows and reports
    max_windows: int = Field(default=1000, ge=1)


class WebhookSettings(_Group):
    name: str
    url: str
    secret: SecretStr

    @model_validator(mode="after")
    def _http_url(self) -> WebhookSettings:
        try:
            url = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise ValueError(
                f"webhook {self.name!r}: url {self.url!r} is not a URL: {exc}"
            ) from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"webhook {self.name!r}: url {self.url!r} is not an http(s) URL")
        return self


class HttpSettings(_Group):
    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)


class FileSettings(BaseSettings):
    """Settings read from a file with the environment over it (``read_settings``): the
    environment's values win over the file's."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


SettingsT = TypeVar("SettingsT", bound=FileSettings)


class MonitorSettings(FileSettings):
    """Everything the monitor reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="MONITOR_", env_nested_delimiter="__", extra="forbid"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    # Where reference profiles come from: the local registry at registry_root (the default),
    # or ``registry: {backend: mlflow, mlflow_url: ...}``.
    registry_root: Path = Path("registry")
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    # A version without a profile is looked up again after this long.
    profile_retry_s: float = Field(default=30.0, gt=0)
    state_dir: Path = Path("monitor-state")
    window: WindowSettings = Field(default_factory=WindowSettings)
    detector: DetectorSettings = Field(default_factory=DetectorSettings)
    decision: DecisionSettings = Field(default_factory=DecisionSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=5, ge=1)
    webhook_backoff_s: float = Field(default=0.5, ge=0)
    # On SIGTERM: how long the last snapshots and the Kafka clients' goodbyes may take (the
    # webhooks' delivery has webhook_timeout_s besides). A broker that does not answer would
    # otherwise hold the exit for the changelog's timeout, past a pod's grace period.
    shutdown_timeout_s: float = Field(default=15.0, gt=0)
    http: HttpSettings = Field(default_factory=HttpSettings)
    performance: PerformanceSettings = Field(default_factory=PerformanceSettings)
    source: str = "model-gateway/drift-monitor"

    @model_validator(mode="after")
    def _local_root(self) -> MonitorSettings:
        if "root" not in self.registry.model_fields_set:
            self.registry = self.registry.model_copy(update={"root": self.registry_root})
        return self


def load_settings(path: Path | None = None, **overrides: Any) -> MonitorSettings:
    """Read the YAML file, apply the environment, validate; name what is wrong."""
    return read_settings(MonitorSettings, path, overrides)


# Paths a config file may give relative to itself: (group or None for the top, key).
_RELATIVE_PATHS = (
    (None, "registry_root"),
    (None, "state_dir"),
    ("registry", "root"),
    ("registry", "cache_dir"),
    ("kafka", "ssl_cafile"),
    ("kafka", "ssl_certfile"),
    ("kafka", "ssl_keyfile"),
)


def read_settings(
    cls: type[SettingsT],
    path: Path | str | None,
    overrides: dict[str, Any],
    *,
    relative_paths: Iterable[tuple[str | None, str]] = _RELATIVE_PATHS,
    error: Callable[[str], Exception] = SettingsError,
) -> SettingsT:
    """``cls`` from a YAML file (TOML where it ends in ``.toml``), the environment over it and
    ``overrides`` over both (``group__key``: the key of a group); ``error`` names what is wrong.

    ``relative_paths`` are the (group or None for the top, key) the file may give relative to
    itself: they are taken from the file's folder, not the working directory."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_file(Path(path), relative_paths, error)
    for name, value in overrides.items():
        group, _, key = name.partition("__")
        if not key:
            data[name] = value
        elif isinstance(data.get(group), dict):
            data[group][key] = value
        else:
            data[group] = {key: value}
    try:
        return cls(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise error(f"invalid configuration: {problems}") from exc


def _read_file(
    path: Path,
    relative_paths: Iterable[tuple[str | None, str]],
    error: Callable[[str], Exception],
) -> dict[str, Any]:
    if not path.is_file():
        raise error(f"config file {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # unreadable, or not text
        raise error(f"config file {path} cannot be read: {exc}") from exc
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise error(f"config file {path} cannot be parsed: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"config file {path} must hold a mapping at the top level")
    for group_name, key in relative_paths:
        group = data if group_name is None else data.get(group_name)
        if not isinstance(group, dict):
            continue
        value = group.get(key)
        where = key if group_name is None else f"{group_name}.{key}"
        if isinstance(value, str) and "\0" in value:  # refused by every file call later
            raise error(f"config file {path}: {where}: a path cannot hold a null byte")
        if isinstance(value, str) and not Path(value).is_absolute():
            try:
                group[key] = str((path.parent / value).resolve())
            except (OSError, RuntimeError) as exc:  # a loop of symbolic links
                raise error(f"config file {path}: {where}: {exc}") from exc
    return data
