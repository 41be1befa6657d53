"""Settings of the operator plane: admin tokens, the audit log, the control topic."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

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
    # HMAC-SHA256 key every message is signed with (GATEWAY_CONTROL__SIGNING_KEY); required when
    # the topic is on. Keys retired by a rotation still verify the topic's older messages.
    signing_key: SecretStr | None = None
    previous_signing_keys: list[SecretStr] = Field(default_factory=list)
    # A canary's owner changes its route at least every step interval plus half this (a step,
    # or a hold saying why it waits); a canary silent for its interval plus this is taken over
    # by another replica (with worker processes too, topic or not).
    canary_takeover_grace_s: float = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _signed(self) -> ControlSettings:
        if not self.enabled:
            return self
        if self.signing_key is None:
            raise ValueError(
                "control.signing_key is required when control.enabled (an unsigned control "
                "topic lets anyone who can write to it change routes)"
            )
        if len(self.signing_key.get_secret_value()) < 32:
            raise ValueError("control.signing_key must be at least 32 characters")
        return self
