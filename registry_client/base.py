"""The one interface every registry backend implements."""

from __future__ import annotations

import abc
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

from registry_client.errors import CorruptModelError, RegistryError
from registry_client.metadata import METADATA_FILE, MODEL_FILE, ModelMetadata, file_sha256
from registry_client.mlmodel import MLMODEL_FILE, VersionFiles, describe_version_dir
from registry_client.reference import ModelRef

__all__ = ["ModelVersion", "Registry", "document_name", "verify_version_dir"]

# Files of the version itself, which a document must not replace.
_VERSION_FILES = frozenset({MODEL_FILE, METADATA_FILE, MLMODEL_FILE})


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A model version whose files are on local disk, ready to load."""

    name: str
    version: str
    path: Path
    metadata: ModelMetadata
    model_file_name: str = MODEL_FILE
    # Where each piece of the description came from ("metadata.json", "MLmodel metadata", ...).
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, version: str, path: Path, files: VersionFiles) -> ModelVersion:
        """The version whose verified folder ``describe_version_dir`` described."""
        return cls(name, version, path, files.metadata, files.model_file, files.sources)

    @property
    def model_file(self) -> Path:
        """Path of the ONNX file."""
        return self.path / self.model_file_name


class Registry(abc.ABC):
    """Resolves references to versions and brings a version's files to local disk."""

    @abc.abstractmethod
    async def resolve(self, ref: ModelRef) -> str:
        """Return the version a reference points at now (follows aliases)."""

    @abc.abstractmethod
    async def fetch(self, name: str, version: str) -> ModelVersion:
        """Make the version's files available locally, verified, and describe them."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections; safe to call twice."""

    async def version_stamp(self, name: str, version: str) -> Hashable | None:
        """What the version's files are now, to tell whether they changed since (a version that
        failed to load is tried again once they have); never raises. None where a version's
        files never change once it exists (the default)."""
        return None

    @abc.abstractmethod
    async def read_document(self, name: str, version: str, key: str) -> bytes | None:
        """A document stored with the version under ``key`` (a file name, such as its reference
        profile's), or None when the version has none."""

    @abc.abstractmethod
    async def store_document(
        self, name: str, version: str, key: str, data: bytes, *, inline: bool = False
    ) -> str:
        """Store a document with the version under ``key``; return where it went. ``inline``
        asks for the registry's own metadata (an MLflow version tag) rather than a file."""

    @abc.abstractmethod
    async def register_version(
        self,
        name: str,
        model_file: Path,
        metadata: ModelMetadata,
        documents: dict[str, bytes] | None = None,
        *,
        key: str | None = None,
    ) -> str:
        """Register ``model_file`` as a new version of ``name`` (created if new) with its
        metadata (its ``model_sha256`` set from the file) and ``documents`` stored with it as
        ``store_document`` would; return the new version. Atomic: a failure leaves no visible
        version, so a version ``fetch`` can see is always whole. With a ``key`` (a job id, say)
        it is idempotent: the version an earlier call with the same key registered is returned
        instead of a second one, so a writer killed before it learnt the answer can ask again."""

    @abc.abstractmethod
    async def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``name@alias`` at an existing ``version`` (created or moved)."""

    @abc.abstractmethod
    async def get_aliases(self, name: str) -> dict[str, str]:
        """The model's aliases and the versions they point at (``latest`` only where set)."""

    async def get(self, ref: ModelRef) -> ModelVersion:
        """Resolve and fetch in one call."""
        version = ref.version if ref.version is not None else await self.resolve(ref)
        return await self.fetch(ref.name, version)


def verify_version_dir(name: str, version: str, path: Path) -> VersionFiles:
    """Describe a version folder and check that its model file is there, non-empty and matches
    its checksum."""
    what = f"model {name} version {version}"
    files = describe_version_dir(path, what)
    model_file = path / files.model_file
    if not model_file.is_file():
        raise CorruptModelError(f"{what}: {files.model_file} is missing")
    if model_file.stat().st_size == 0:
        raise CorruptModelError(f"{what}: {files.model_file} is empty")
    expected = files.metadata.model_sha256
    if expected is not None:
        actual = file_sha256(model_file)
        if actual != expected:
            raise CorruptModelError(
                f"{what}: {files.model_file} sha256 {actual[:12]}... "
                f"does not match metadata {expected[:12]}..."
            )
    return files


def document_name(key: str) -> str:
    """``key`` as the file name of a document stored with a version: a plain file name that
    is none of the version's own files; RegistryError otherwise."""
    if not key or "/" in key or "\\" in key or key.startswith("."):
        raise RegistryError(f"invalid document name {key!r}: a plain file name is expected")
    if key in _VERSION_FILES:
        raise RegistryError(f"invalid document name {key!r}: the version's own file has it")
    return key
