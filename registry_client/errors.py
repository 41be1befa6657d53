"""The registry client's exception tree."""

from __future__ import annotations

__all__ = [
    "CorruptModelError",
    "InvalidReferenceError",
    "ModelNotFoundError",
    "RegistryError",
    "RegistryUnavailableError",
    "VersionNotFoundError",
]


class RegistryError(Exception):
    """Base error of the registry client."""

    retriable = False


class InvalidReferenceError(RegistryError):
    """A model reference string could not be parsed."""


class ModelNotFoundError(RegistryError):
    """The registry holds no model of that name."""


class VersionNotFoundError(RegistryError):
    """The model exists but the version or alias does not."""


class CorruptModelError(RegistryError):
    """A model version's files are missing, truncated or fail verification."""


class RegistryUnavailableError(RegistryError):
    """The registry could not be reached, even after retries."""

    retriable = True
