"""Model references: ``name@alias``, ``name/version``, and MLflow's ``models:/`` URIs.

Names follow MLflow's rules for registered models: any characters but ``/`` and ``:``
(spaces, ``@`` and quotes included), and not a name that a path would read otherwise
(``.``, ``..``). In the bare form the name is taken literally and the alias is what follows
the last ``@``; a ``models:/`` URI is URL-decoded first (``models:/Wine%20classifier@champion``),
so a literal ``%`` in a name is written ``%25`` there.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote

from registry_client.errors import InvalidReferenceError

__all__ = ["ModelRef", "check_model_name"]

# At most 128 characters (and 255 bytes of UTF-8): a name becomes a file name (255 bytes at
# most on most file systems) in the local registry and the model cache; longer ones would fail
# there, not here.
MAX_NAME = 128
_LABEL = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_NAME - 1}}}$")  # aliases, versions
_MODELS_URI = "models:/"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A pointer into a registry: a fixed version, or an alias that may move.

    >>> ModelRef.parse("fraud@champion")
    ModelRef(name='fraud', alias='champion', version=None)
    >>> ModelRef.parse("models:/Fraud%20model/3")
    ModelRef(name='Fraud model', alias=None, version='3')
    """

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``name@alias``, ``name/version``, a bare ``name`` (alias ``latest``), or the
        same as ``models:/name@alias``, ``models:/name/N``, ``models:/name/latest``."""
        text = text.strip()
        if text.startswith(_MODELS_URI):
            return _parse_uri(text)
        name, alias, version = text, None, None
        if "/" in text:
            name, _, version = text.rpartition("/")
        elif "@" in text:
            name, _, alias = text.rpartition("@")
        return _checked(text, name, alias, version)

    @property
    def is_alias(self) -> bool:
        """True when the reference can move (an alias), False when it is pinned."""
        return self.alias is not None

    def __str__(self) -> str:
        return (
            f"{self.name}@{self.alias}" if self.alias is not None else f"{self.name}/{self.version}"
        )


def check_model_name(name: str) -> str:
    """Return ``name`` if MLflow would accept it as a registered model name, else raise."""
    if len(name) > MAX_NAME or len(name.encode()) > 255:
        raise InvalidReferenceError(
            f"invalid model name {name[:300]!r}: at most {MAX_NAME} characters (255 bytes)"
        )
    if not name.strip() or not name.isprintable():
        raise InvalidReferenceError(f"invalid model name {name!r}: empty or not printable")
    if "/" in name or ":" in name:
        raise InvalidReferenceError(f"invalid model name {name!r}: names cannot hold '/' or ':'")
    if posixpath.normpath(name) != name or name in (".", ".."):
        raise InvalidReferenceError(f"invalid model name {name!r}: it reads as another path")
    return name


def _parse_uri(text: str) -> ModelRef:
    path = text.removeprefix(_MODELS_URI)
    name, alias, version = path, None, None
    if "/" in path:
        name, _, suffix = path.partition("/")
        if suffix.lower() == "latest":
            alias = "latest"
        elif suffix.isdigit():
            version = suffix
        else:
            raise InvalidReferenceError(
                f"invalid model reference {text[:300]!r}: after the name comes a version or "
                "'latest' (stages are not supported: set an alias and use models:/name@alias)"
            )
    elif "@" in path:
        name, _, alias = path.rpartition("@")
    elif path.startswith("m-"):
        raise InvalidReferenceError(
            f"invalid model reference {text[:300]!r}: a logged model id; register it and refer to "
            "the registered model (models:/name@alias or models:/name/N)"
        )
    return _checked(text, unquote(name), alias, version)


def _checked(text: str, name: str, alias: str | None, version: str | None) -> ModelRef:
    try:
        check_model_name(name)
    except InvalidReferenceError as exc:
        raise InvalidReferenceError(
            f"invalid model reference {text[:300]!r}: expected 'name@alias', 'name/version', "
            f"'models:/name@alias' or 'models:/name/N' ({exc})"
        ) from exc
    for label in (alias, version):
        if label is not None and not _LABEL.match(label):
            raise InvalidReferenceError(
                f"invalid model reference {text[:300]!r}: {label[:300]!r} is not a valid alias "
                f"or version (letters, digits, '_', '.', '-'; at most {MAX_NAME} characters)"
            )
    if alias is None and version is None:
        alias = "latest"
    return ModelRef(name=name, alias=alias, version=version)
