"""The one interface every registry backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

from registry_client.errors import CorruptModelError
from registry_client.metadata import MODEL_FILE, ModelMetadata, file_sha256
from registry_client.reference import ModelRef

__all__ = ["ModelVersion", "Registry", "verify_version_dir"]


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A model version whose files are on local disk, ready to load."""

    name: str
    version: str
    path: Path
    metadata: ModelMetadata

    @property
    def model_file(self) -> Path:
        """Path of the ONNX file."""
        return self.path / MODEL_FILE


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

    async def get(self, ref: ModelRef) -> ModelVersion:
        """Resolve and fetch in one call."""
        version = ref.version if ref.version is not None else await self.resolve(ref)
        return await self.fetch(ref.name, version)


def verify_version_dir(name: str, version: str, path: Path) -> ModelMetadata:
    """Check that a version folder holds a non-empty model file that matches its checksum."""
    model_file = path / MODEL_FILE
    if not model_file.is_file():
        raise CorruptModelError(f"model {name} version {version}: {MODEL_FILE} is missing")
    if model_file.stat().st_size == 0:
        raise CorruptModelError(f"model {name} version {version}: {MODEL_FILE} is empty")
    metadata = ModelMetadata.load(path)
    if metadata.model_sha256 is not None:
        actual = file_sha256(model_file)
        if actual != metadata.model_sha256:
            raise CorruptModelError(
                f"model {name} version {version}: {MODEL_FILE} sha256 {actual[:12]}... "
                f"does not match metadata {metadata.model_sha256[:12]}..."
            )
    return metadata
