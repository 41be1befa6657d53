"""A registry in a local folder: ``<root>/<model>/<version>/`` plus ``aliases.json``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path

from registry_client.base import ModelVersion, Registry, verify_version_dir
from registry_client.errors import (
    CorruptModelError,
    ModelNotFoundError,
    RegistryError,
    VersionNotFoundError,
)
from registry_client.metadata import MODEL_FILE, ModelMetadata, file_sha256
from registry_client.mlmodel import MLMODEL_FILE
from registry_client.reference import ModelRef

__all__ = ["LocalRegistry"]

_ALIASES_FILE = "aliases.json"


class LocalRegistry(Registry):
    """The embedded default registry; also the write side used by the demo and the tests.

    ``latest`` is an implicit alias for the highest version unless an ``aliases.json``
    entry overrides it.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    async def resolve(self, ref: ModelRef) -> str:
        if ref.version is not None:
            return ref.version
        assert ref.alias is not None
        return await asyncio.to_thread(self._resolve_alias, ref.name, ref.alias)

    async def fetch(self, name: str, version: str) -> ModelVersion:
        path = self._version_dir(name, version)
        files = await asyncio.to_thread(verify_version_dir, name, version, path)
        return ModelVersion.of(name, version, path, files)

    async def read_document(self, name: str, version: str, key: str) -> bytes | None:
        path = self._version_dir(name, version) / _document_name(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    async def store_document(
        self, name: str, version: str, key: str, data: bytes, *, inline: bool = False
    ) -> str:
        """Write the document as a file in the version folder (``inline`` changes nothing)."""
        path = self._version_dir(name, version) / _document_name(key)
        await asyncio.to_thread(_write_atomically, path, data)
        return str(path)

    # -- reading ------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Names of the registered models."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def versions(self, name: str) -> list[str]:
        """Versions of a model, oldest first (numeric order where versions are numbers)."""
        model_dir = self._model_dir(name)
        found = [p.name for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(found, key=_version_key)

    def aliases(self, name: str) -> dict[str, str]:
        """The model's aliases and the versions they point at."""
        path = self._model_dir(name) / _ALIASES_FILE
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RegistryError(f"model {name}: {_ALIASES_FILE} is not valid JSON") from exc
        if not isinstance(data, dict):
            raise RegistryError(f"model {name}: {_ALIASES_FILE} must hold an object")
        return {str(k): str(v) for k, v in data.items()}

    # -- writing ------------------------------------------------------------------------------

    def register(
        self, name: str, model_file: Path, metadata: ModelMetadata, version: str | None = None
    ) -> str:
        """Copy a model file in as a new version (next integer unless given); return the version."""
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        if version is None:
            numeric = [int(v) for v in self.versions(name) if v.isdigit()]
            version = str(max(numeric, default=0) + 1)
        target = model_dir / version
        if target.exists():
            raise RegistryError(f"model {name} version {version} already exists")
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
        try:
            shutil.copyfile(model_file, staging / MODEL_FILE)
            checksum = file_sha256(staging / MODEL_FILE)
            metadata.model_copy(update={"model_sha256": checksum}).dump(staging)
            os.replace(staging, target)  # a version appears whole or not at all
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point an alias at an existing version, atomically."""
        ModelRef.parse(f"{name}@{alias}")
        self._version_dir(name, version)
        aliases = self.aliases(name)
        aliases[alias] = version
        model_dir = self._model_dir(name)
        _write_atomically(model_dir / _ALIASES_FILE, json.dumps(aliases, indent=2).encode())

    # -- internals ----------------------------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        model_dir = self.root / name
        if not model_dir.is_dir():
            raise ModelNotFoundError(f"model {name!r} is not in the registry at {self.root.name}")
        return model_dir

    def _version_dir(self, name: str, version: str) -> Path:
        ModelRef.parse(f"{name}/{version}")  # rejects path tricks such as '..'
        path = self._model_dir(name) / version
        if not path.is_dir():
            raise VersionNotFoundError(f"model {name!r} has no version {version!r}")
        if not (path / MODEL_FILE).exists() and not (path / MLMODEL_FILE).exists():
            raise CorruptModelError(f"model {name} version {version}: {MODEL_FILE} is missing")
        return path

    def _resolve_alias(self, name: str, alias: str) -> str:
        aliases = self.aliases(name)
        if alias in aliases:
            return aliases[alias]
        if alias == "latest":
            versions = self.versions(name)
            if versions:
                return versions[-1]
            raise VersionNotFoundError(f"model {name!r} has no versions")
        raise VersionNotFoundError(f"model {name!r} has no alias {alias!r}")


def _document_name(key: str) -> str:
    if not key or "/" in key or key.startswith("."):
        raise RegistryError(f"invalid document name {key!r}: a plain file name is expected")
    return key


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)
