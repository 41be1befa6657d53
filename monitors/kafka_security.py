"""A Kafka cluster's security settings (SASL, TLS), shared by the monitor's consumer and the
gateway's producers, with the aiokafka keyword arguments they make."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

__all__ = ["KafkaSecurity", "KafkaSecurityError"]

_TLS_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


class KafkaSecurityError(ValueError):
    """A TLS file that cannot be read or used; the message names the setting."""


class KafkaSecurity(BaseModel):
    """Security keys of a Kafka client; a settings group extends it and names itself."""

    model_config = ConfigDict(extra="forbid")
    group: ClassVar[str] = "kafka"

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @model_validator(mode="after")
    def _sasl_complete(self) -> Self:
        if self.security_protocol.startswith("SASL") and (
            self.sasl_mechanism is None or self.sasl_username is None or self.sasl_password is None
        ):
            raise ValueError(
                f"{self.group}.sasl_mechanism, sasl_username and sasl_password are required with "
                f"security_protocol {self.security_protocol}"
            )
        return self

    def security_options(self) -> dict[str, Any]:
        """The security keyword arguments of an aiokafka client (secrets included); raises
        KafkaSecurityError naming the setting of a TLS file that cannot be read or used. The
        files are read here, where a client starts, not when the settings load: a config may
        name files that only the process's machine (a pod's volume) holds."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self._ssl_context()
        return options

    def _ssl_context(self) -> ssl.SSLContext:
        from aiokafka.helpers import create_ssl_context

        for key in _TLS_FILES:
            path: Path | None = getattr(self, key)
            try:
                if path is not None:
                    path.open("rb").close()
            except OSError as exc:
                raise KafkaSecurityError(
                    f"{self.group}.{key}: cannot read {path}: {exc.strerror or exc}"
                ) from exc
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
        except ssl.SSLError as exc:
            raise KafkaSecurityError(
                f"{self.group}.ssl_cafile: not a usable CA certificate file "
                f"({self.ssl_cafile}): {exc}"
            ) from exc
        if self.ssl_certfile is not None:
            try:
                context.load_cert_chain(
                    str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
                )
            except ssl.SSLError as exc:
                raise KafkaSecurityError(
                    f"{self.group}.ssl_certfile, ssl_keyfile: not a usable certificate and key "
                    f"({self.ssl_certfile}, {self.ssl_keyfile}): {exc}"
                ) from exc
        return context
