"""Model references: ``name@alias`` or ``name/version``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry_client.errors import InvalidReferenceError

__all__ = ["ModelRef"]

# At most 128 characters: a name becomes a file name (255 bytes at most on most file systems)
# in the local registry and the model cache; longer ones would fail there, not here.
MAX_NAME = 128
_NAME = rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_NAME - 1}}}"
_REF_RE = re.compile(rf"^(?P<name>{_NAME})(?:@(?P<alias>{_NAME})|/(?P<version>{_NAME}))?$")


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A pointer into a registry: a fixed version, or an alias that may move.

    >>> ModelRef.parse("fraud@champion")
    ModelRef(name='fraud', alias='champion', version=None)
    """

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``name@alias``, ``name/version`` or a bare ``name`` (alias ``latest``)."""
        match = _REF_RE.match(text.strip())
        if match is None:
            raise InvalidReferenceError(
                f"invalid model reference {text[:300]!r}: expected 'name@alias' or "
                f"'name/version', each part at most {MAX_NAME} characters"
            )
        alias, version = match.group("alias"), match.group("version")
        if alias is None and version is None:
            alias = "latest"
        return cls(name=match.group("name"), alias=alias, version=version)

    @property
    def is_alias(self) -> bool:
        """True when the reference can move (an alias), False when it is pinned."""
        return self.alias is not None

    def __str__(self) -> str:
        return (
            f"{self.name}@{self.alias}" if self.alias is not None else f"{self.name}/{self.version}"
        )
