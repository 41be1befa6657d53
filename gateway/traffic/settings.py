"""Settings of the operator plane: admin tokens, the audit log, the control topic."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["AdminSettings", "ControlSettings"]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdminSettings(_Group):
    # Who may change routes: actor name -> bearer token. None configured disables the admin API.
    tokens: dict[str, SecretStr] = Field(default_factory=dict)
    audit_log: Path = Path("admin-audit.jsonl")


class ControlSettings(_Group):
    """The Kafka control topic that carries route changes to every replica."""

    enabled: bool = False
    # Defaults to feature_log.bootstrap_servers.
    bootstrap_servers: str | None = None
    topic: str = "gateway-control"
    timeout_s: float = Field(default=10.0, gt=0)
