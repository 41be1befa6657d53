"""A registry in a local folder: ``<root>/<model>/<version>/`` plus ``aliases.json``."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import ParamSpec, TypeVar

from registry_client.base import ModelVersion, Registry, document_name, verify_version_dir
from registry_client.errors import (
    CorruptModelError,
    ModelNotFoundError,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
)
from registry_client.metadata import METADATA_FILE, MODEL_FILE, ModelMetadata, file_sha256
from registry_client.mlmodel import MLMODEL_FILE
from registry_client.reference import ModelRef

__all__ = ["LocalRegistry"]

_ALIASES_FILE = "aliases.json"
# The registration key of a version registered with one (``register(key=...)``).
_KEY_FILE = ".registration-key"
# Most entries a version folder's stamp looks at (a version holds a handful of files).
_STAMP_MAX_ENTRIES = 1000

_P = ParamSpec("_P")
_T = TypeVar("_T")


class LocalRegistry(Registry):
    """The embedded default registry; also the write side used by the demo and the tests.

    ``latest`` is an implicit alias for the highest version unless an ``aliases.json``
    entry overrides it. A folder or file the process cannot read (permissions, an I/O error)
    is ``RegistryUnavailableError``: it may pass. A version folder is whole once it holds its
    model and its description (``metadata.json`` or ``MLmodel``): one without either is
    refused as corrupt, so a folder copied in by hand, model first, is never served without
    its metadata (``register`` builds the folder aside and is always whole).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    async def resolve(self, ref: ModelRef) -> str:
        if ref.version is not None:
            return ref.version
        assert ref.alias is not None
        return await asyncio.to_thread(_readable, self._resolve_alias, ref.name, ref.alias)

    async def fetch(self, name: str, version: str) -> ModelVersion:
        return await asyncio.to_thread(_readable, self._fetch, name, version)

    async def version_stamp(self, name: str, version: str) -> Hashable:
        """The version folder's entries with their sizes, inodes and change times (empty while
        it does not exist): it changes whenever a file of the version is written, replaced,
        added, removed or has its permissions changed."""
        return await asyncio.to_thread(self._stamp, name, version)

    async def read_document(self, name: str, version: str, key: str) -> bytes | None:
        path = self._version_dir(name, version) / document_name(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    async def store_document(
        self, name: str, version: str, key: str, data: bytes, *, inline: bool = False
    ) -> str:
        """Write the document as a file in the version folder (``inline`` changes nothing)."""
        path = self._version_dir(name, version) / document_name(key)
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
            data = json.loads(path.read_bytes())
        except ValueError as exc:  # not JSON, or not UTF-8 text
            raise RegistryError(f"model {name}: {_ALIASES_FILE} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise RegistryError(f"model {name}: {_ALIASES_FILE} must hold an object")
        return {str(k): str(v) for k, v in data.items()}

    async def register_version(
        self,
        name: str,
        model_file: Path,
        metadata: ModelMetadata,
        documents: dict[str, bytes] | None = None,
        *,
        key: str | None = None,
    ) -> str:
        """The next integer version, its documents as files in its folder (see ``register``)."""
        return await asyncio.to_thread(
            self.register, name, model_file, metadata, None, documents, key=key
        )

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        await asyncio.to_thread(self.set_alias_sync, name, alias, version)

    async def get_aliases(self, name: str) -> dict[str, str]:
        return await asyncio.to_thread(self.aliases, name)

    # -- writing, blocking (for scripts and test set-ups without an event loop) ----------------

    def register(
        self,
        name: str,
        model_file: Path,
        metadata: ModelMetadata,
        version: str | None = None,
        documents: dict[str, bytes] | None = None,
        *,
        key: str | None = None,
    ) -> str:
        """Copy a model file in as a new version (next integer unless given), with its documents;
        return the version. The folder is built aside and renamed into place, so the version
        appears whole or not at all; two writers never get the same number. With a ``key``, a
        version registered before under that key (kept in its folder) is returned instead."""
        ModelRef.parse(f"{name}/{version or '1'}")  # rejects path tricks such as '..'
        for document in documents or {}:
            document_name(document)
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        if key is not None:
            earlier = self._registered_under(name, key)
            if earlier is not None:
                return earlier
        staging = model_dir / f".register-{uuid.uuid4().hex}"
        staging.mkdir()  # with the umask's permissions, as the version folder's readers expect
        try:
            shutil.copyfile(model_file, staging / MODEL_FILE)
            checksum = file_sha256(staging / MODEL_FILE)
            metadata.model_copy(update={"model_sha256": checksum}).dump(staging)
            for document, data in (documents or {}).items():
                (staging / document).write_bytes(data)
            if key is not None:
                (staging / _KEY_FILE).write_text(key)
            return _install_version(model_dir, staging, name, version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def set_alias_sync(self, name: str, alias: str, version: str) -> None:
        """Point an alias at an existing version, atomically."""
        ModelRef.parse(f"{name}@{alias}")
        self._version_dir(name, version)
        aliases = self.aliases(name)
        aliases[alias] = version
        model_dir = self._model_dir(name)
        _write_atomically(model_dir / _ALIASES_FILE, json.dumps(aliases, indent=2).encode())

    # -- internals ----------------------------------------------------------------------------

    def _fetch(self, name: str, version: str) -> ModelVersion:
        path = self._version_dir(name, version)
        if not (path / METADATA_FILE).exists() and not (path / MLMODEL_FILE).exists():
            raise CorruptModelError(
                f"model {name} version {version}: {METADATA_FILE} is missing (a version folder "
                f"is whole once it holds {MODEL_FILE} and {METADATA_FILE}, or an {MLMODEL_FILE})"
            )
        files = verify_version_dir(name, version, path)
        return ModelVersion.of(name, version, path, files)

    def _stamp(self, name: str, version: str) -> Hashable:
        try:
            ModelRef.parse(f"{name}/{version}")  # rejects path tricks such as '..'
        except RegistryError:
            return object()  # fetching it says what is wrong
        path = self.root / name / version
        entries: list[tuple[str, int, int, int, int]] = []
        try:
            for folder, dirs, files in os.walk(path):
                for entry in [folder, *(os.path.join(folder, f) for f in dirs + files)]:
                    stat = os.stat(entry, follow_symlinks=False)
                    relative = os.path.relpath(entry, path)
                    entries.append(
                        (relative, stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)
                    )
                    if len(entries) > _STAMP_MAX_ENTRIES:
                        return object()  # too big to say: taken as changed
        except OSError:
            return object()  # unreadable now: taken as changed, so it is tried again
        return tuple(sorted(entries))

    def _registered_under(self, name: str, key: str) -> str | None:
        for version in self.versions(name):
            path = self.root / name / version / _KEY_FILE
            if path.is_file() and path.read_text() == key:
                return version
        return None

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


def _install_version(model_dir: Path, staging: Path, name: str, version: str | None) -> str:
    """Rename a built version folder into place as ``version``, or as the next free integer."""
    while True:
        if version is None:
            found = [p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
            target = model_dir / str(max(map(int, found), default=0) + 1)
        else:
            target = model_dir / version
        try:
            # rename(2) of a folder onto an existing non-empty one fails: no two writers get
            # the same version, and a version appears whole or not at all
            os.rename(staging, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if version is not None:
                raise RegistryError(f"model {name} version {version} already exists") from None
            continue
        return target.name


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}-{uuid.uuid4().hex}")
    # 0o666 less the umask, as open() gives: mkstemp's 0o600 left aliases.json unreadable to
    # a gateway running as another user than the writer
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _readable(read: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``read(...)``, with an OSError (permissions, an I/O error) as RegistryUnavailableError:
    it may pass, so whoever follows the registry tries again rather than giving up."""
    try:
        return read(*args, **kwargs)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise RegistryUnavailableError(
            f"cannot read the registry:{where}: {exc.strerror or exc}"
        ) from exc


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)
