"""Which registry to read, as a settings group the gateway and the monitor share."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from registry_client.base import Registry
from registry_client.local import LocalRegistry

__all__ = ["RegistrySettings", "open_registry"]


class RegistrySettings(BaseModel):
    """``backend: local`` reads the folder ``root``; ``mlflow`` the server at ``mlflow_url``."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "mlflow"] = "local"
    root: Path = Path("registry")
    mlflow_url: str | None = None
    mlflow_token: SecretStr | None = None
    cache_dir: Path = Path(".model-cache")
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=3, ge=0)

    @model_validator(mode="after")
    def _mlflow_needs_url(self) -> RegistrySettings:
        if self.backend == "mlflow" and not self.mlflow_url:
            raise ValueError("registry.mlflow_url is required when registry.backend is 'mlflow'")
        return self


def open_registry(settings: RegistrySettings) -> Registry:
    """The registry backend the settings name (close it with ``aclose``)."""
    if settings.backend == "mlflow":
        from registry_client.mlflow import MlflowRegistry

        assert settings.mlflow_url is not None
        token = settings.mlflow_token.get_secret_value() if settings.mlflow_token else None
        return MlflowRegistry(
            settings.mlflow_url,
            settings.cache_dir,
            token=token,
            timeout_s=settings.timeout_s,
            retries=settings.retries,
        )
    return LocalRegistry(settings.root)
