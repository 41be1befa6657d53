"""MLflow Model Registry over its REST API (httpx only; this package never imports mlflow).

``latest``, when no such alias is set, is the highest version number. Artifacts come through
the MLflow artifact proxy (server started with ``--artifacts-destination``), following the
server's ``get-download-uri`` answer: ``mlflow-artifacts:`` as is, ``runs:/<run_id>/<path>``
through the run, ``models:/m-<id>`` (MLflow 3 logged models) through the logged model.

Layout required: an MLflow model (``MLmodel`` with the onnx flavour, as ``mlflow.onnx.log_model``
writes it) or a bare ``model.onnx`` (and optionally ``metadata.json``) at the root of the
version's artifact folder, or in exactly one direct subfolder (as when the source is a run's
root and the files were logged under ``model/``); only that folder is fetched, ``MLmodel`` first
(a version of another flavour is refused before its files come). Files are checked against the
listed sizes and the metadata's sha256 and cached under ``cache_dir/<model>/<version>/`` (the
model name URL-encoded, shortened with a digest when long), which appears whole (renamed into
place) or not at all.

Documents stored with a version (``read_document``/``store_document``, the monitor's reference
profiles) live in a version tag named after the document: the document itself, or the
``runs:/<run_id>/<path>`` of an artifact of the version's run.

``register_version`` writes as the MLflow client would, over REST: a run in the experiment
``experiment`` (created if missing) gets ``model/model.onnx``, ``model/metadata.json`` and the
documents beside them as artifacts, then the version is created from that folder, the one step
that makes it visible; a failure before it deletes the run, one during it deletes any version
made from the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from registry_client.base import ModelVersion, Registry, document_name, verify_version_dir
from registry_client.errors import (
    CorruptModelError,
    ModelNotFoundError,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
)
from registry_client.metadata import METADATA_FILE, MODEL_FILE, ModelMetadata, file_sha256
from registry_client.mlmodel import (
    MLMODEL_FILE,
    VersionFiles,
    describe_version_dir,
    onnx_file_of,
    parse_mlmodel,
)
from registry_client.reference import ModelRef

__all__ = ["MlflowRegistry"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_API = "/api/2.0/mlflow"
_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
# Written last into a verified version folder; holds model.onnx's size for a cheap re-check.
_COMPLETE = ".complete"
_CHUNK_BYTES = 1 << 20
_MAX_TAG_CHARS = 100_000  # MLflow's limit on a model version tag's value
_EXPERIMENT = "model-gateway registrations"
_KEY_TAG = "model_gateway.registration_key"  # the run tag of a keyed registration
_READY_TIMEOUT_S = 60.0  # for a server that registers versions asynchronously
_MAX_DEPTH = 32  # artifact folders nested deeper are refused (a listing that never ends)
# Files and folders listed under a version's artifacts, in all: more are refused before they are
# all listed and held (a run's whole artifacts); a model's folder holds a handful.
_MAX_ENTRIES = 1_000


class MlflowRegistry(Registry):
    """Model versions from an MLflow tracking server's registry."""

    def __init__(
        self,
        base_url: str,
        cache_dir: Path,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
        experiment: str = _EXPERIMENT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.experiment = experiment
        self._retries = retries
        self._backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def resolve(self, ref: ModelRef) -> str:
        if ref.version is not None:
            await self._require_version(ref.name, ref.version)
            return ref.version
        assert ref.alias is not None
        alias = f"{_API}/registered-models/alias"
        response = await self._get(alias, name=ref.name, alias=ref.alias)
        if response.status_code == 200:
            return _version_number(response, _field(response, "model_version", "version"))
        if not _not_found(response):
            _check(response, f"alias {ref}")
        await self._require_model(ref.name)  # ModelNotFoundError if the model is the problem
        if ref.alias == "latest":
            return await self._latest(ref.name)
        raise VersionNotFoundError(f"model {ref.name!r} has no alias {ref.alias!r}")

    async def fetch(self, name: str, version: str) -> ModelVersion:
        ModelRef.parse(f"{name}/{version}")  # rejects path tricks such as '..'
        what = f"model {name} version {version}"
        target = self.cache_dir / _cache_folder(name) / version
        files = await asyncio.to_thread(_cached, target, what)
        if files is not None:
            return ModelVersion.of(name, version, target, files)
        await self._require_version(name, version)
        source = await self._artifact_path(name, version)
        listed = await self._list(source)
        folder = _model_folder(what, listed)
        staging = await asyncio.to_thread(_staging_dir, self.cache_dir, ".download-")
        try:
            wanted = {
                path.removeprefix(folder).lstrip("/"): size
                for path, size in listed.items()
                if not folder or path.startswith(folder + "/")
            }
            # MLmodel first: a version of another flavour is refused before its files come.
            order = sorted(wanted, key=lambda path: path != MLMODEL_FILE)
            for path in order:
                remote = _join(_join(source, folder), path)
                await self._download(remote, staging / path, wanted[path], what)
                if path == MLMODEL_FILE:
                    mlmodel = await asyncio.to_thread((staging / path).read_bytes)
                    onnx_file_of(parse_mlmodel(mlmodel, what), what)
            files = await asyncio.to_thread(_install, name, version, staging, target)
        except BaseException:
            # synchronous on purpose: it must run even while the task is being cancelled
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ModelVersion.of(name, version, target, files)

    async def read_document(self, name: str, version: str, key: str) -> bytes | None:
        """From the version's tag ``key`` (the document itself, or where it is stored), else
        from a file ``key`` beside the model in the version's artifacts, else None."""
        what = f"model {name} version {version}: {key}"
        details = await self._version(name, version)
        listed = details.get("tags") or []
        if not isinstance(listed, list) or not all(isinstance(t, dict) for t in listed):
            raise RegistryError(f"{what}: MLflow answered tags that are not a list of objects")
        tags = {t.get("key"): t.get("value") for t in listed}
        value = tags.get(key)
        if isinstance(value, str) and value.lstrip().startswith("{"):
            return value.encode()
        if isinstance(value, str):
            document = await self._read_artifact(await self._proxy_path(value, what))
            if document is None:
                raise CorruptModelError(f"{what}: the version's tag points at {value}, not found")
            return document
        source = await self._artifact_path(name, version)
        listed = await self._list(source)
        folder = _model_folder(f"model {name} version {version}", listed)
        return await self._read_artifact(_join(_join(source, folder), key))

    async def store_document(
        self, name: str, version: str, key: str, data: bytes, *, inline: bool = False
    ) -> str:
        """As the version's tag ``key`` (``inline``), or as an artifact of the version's run,
        ``registered-models/<name>/<version>/<key>`` (so versions from one run keep theirs
        apart), with the tag pointing at it (``runs:/<run_id>/...``)."""
        what = f"model {name} version {version}"
        if inline:
            if len(data) > _MAX_TAG_CHARS:
                raise RegistryError(
                    f"{what}: {key} has {len(data)} bytes, more than an MLflow tag holds "
                    f"({_MAX_TAG_CHARS}); store it as an artifact of the run instead"
                )
            await self._set_tag(name, version, key, data.decode())
            return f"tag {key!r} of {what}"
        run_id = (await self._version(name, version)).get("run_id")
        if not run_id:
            raise RegistryError(f"{what} has no run to store {key} with; store it inline")
        location = f"runs:/{run_id}/registered-models/{quote(name, safe='')}/{version}/{key}"
        path = await self._proxy_path(location, what)
        response = await self._client.put(f"{_ARTIFACTS}/{quote(path)}", content=data)
        _check(response, f"{what}: uploading {key}")
        await self._set_tag(name, version, key, location)
        return location

    async def register_version(
        self,
        name: str,
        model_file: Path,
        metadata: ModelMetadata,
        documents: dict[str, bytes] | None = None,
        *,
        key: str | None = None,
    ) -> str:
        ModelRef.parse(f"{name}/1")  # a name the gateway can refer to
        for document in documents or {}:
            document_name(document)
        if key is not None:
            earlier = await self._registered_under(name, key)
            if earlier is not None:
                return earlier
        checksum = await asyncio.to_thread(file_sha256, model_file)
        described = metadata.model_copy(update={"model_sha256": checksum})
        files = {METADATA_FILE: described.model_dump_json(indent=2, exclude_none=True).encode()}
        files.update(documents or {})
        await self._create_model(name)
        run_id, artifact_uri = await self._create_run(name, key)
        source = _join(artifact_uri, "model")
        try:
            folder = await self._proxy_path(source, f"model {name}: run {run_id}")
            await self._upload(f"{folder}/{MODEL_FILE}", model_file)
            for key, data in files.items():
                await self._upload(f"{folder}/{key}", data)
        except BaseException:
            await asyncio.shield(self._delete_run(run_id))
            raise
        try:
            version = await self._create_version(name, source, run_id)
        except BaseException:
            # the answer may be lost after the server made the version: take back any
            await asyncio.shield(self._delete_versions_of_run(name, run_id))
            await asyncio.shield(self._delete_run(run_id))
            raise
        await self._send("POST", "runs/update", run_id=run_id, status="FINISHED",
                         end_time=int(time.time() * 1000))  # fmt: skip
        return version

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        ModelRef.parse(f"{name}@{alias}")
        await self._require_version(name, version)
        response = await self._send(
            "POST", "registered-models/alias", name=name, alias=alias, version=version
        )
        _check(response, f"model {name!r}: alias {alias!r} -> {version}")

    async def get_aliases(self, name: str) -> dict[str, str]:
        response = await self._get(f"{_API}/registered-models/get", name=name)
        if _not_found(response):
            raise ModelNotFoundError(f"model {name!r} is not in the MLflow registry")
        _check(response, f"model {name!r}")
        entries = _entries(response, "registered_model", "aliases")
        if not all(isinstance(a.get("alias"), str) for a in entries):
            raise _unexpected(response)
        return {a["alias"]: _version_number(response, a.get("version")) for a in entries}

    # -- registry writes ----------------------------------------------------------------------

    async def _create_model(self, name: str) -> None:
        response = await self._send("POST", "registered-models/create", name=name)
        if response.status_code == 400 and _error_code(response) == "RESOURCE_ALREADY_EXISTS":
            return
        _check(response, f"creating model {name!r}")

    async def _registered_under(self, name: str, key: str) -> str | None:
        """The version a registration with ``key`` made, found by its run's tag; runs of such a
        registration that never made a version (its writer died) are deleted on the way."""
        response = await self._get(
            f"{_API}/experiments/get-by-name", experiment_name=self.experiment
        )
        if _not_found(response):
            return None
        _check(response, f"experiment {self.experiment!r}")
        experiment_id = str(_field(response, "experiment", "experiment_id"))
        tag = f"tags.`{_KEY_TAG}` = {_quoted(key)}"
        found = await self._send(
            "POST", "runs/search", experiment_ids=[experiment_id], filter=tag, max_results=100
        )
        _check(found, f"model {name!r}: runs registered under key {key!r}")
        for run in _entries(found, "runs"):
            info = run.get("info")
            if not isinstance(info, dict) or not isinstance(info.get("run_id"), str):
                raise _unexpected(found)
            run_id = info["run_id"]
            versions = await self._get(
                f"{_API}/model-versions/search",
                filter=f"name={_quoted(name)} and run_id='{run_id}'",
            )
            _check(versions, f"model {name!r}: versions of run {run_id}")
            for entry in _entries(versions, "model_versions"):
                if entry.get("status", "READY") == "READY":
                    return _version_number(versions, entry.get("version"))
            await self._delete_versions_of_run(name, run_id)
            await self._delete_run(run_id)
        return None

    async def _create_run(self, name: str, key: str | None = None) -> tuple[str, str]:
        """A run to hold the new version's files: (run id, artifact URI); tagged with the
        registration's key, if it has one."""
        response = await self._get(
            f"{_API}/experiments/get-by-name", experiment_name=self.experiment
        )
        if _not_found(response):
            created = await self._send("POST", "experiments/create", name=self.experiment)
            if _error_code(created) != "RESOURCE_ALREADY_EXISTS":  # else another writer won
                _check(created, f"creating experiment {self.experiment!r}")
                experiment_id = str(_field(created, "experiment_id"))
            else:
                again = await self._get(
                    f"{_API}/experiments/get-by-name", experiment_name=self.experiment
                )
                _check(again, f"experiment {self.experiment!r}")
                experiment_id = str(_field(again, "experiment", "experiment_id"))
        else:
            _check(response, f"experiment {self.experiment!r}")
            experiment_id = str(_field(response, "experiment", "experiment_id"))
        run = await self._send(
            "POST", "runs/create", experiment_id=experiment_id,
            start_time=int(time.time() * 1000), run_name=f"register {name}",
            tags=[{"key": _KEY_TAG, "value": key}] if key is not None else [],
        )  # fmt: skip
        _check(run, f"model {name!r}: creating a run in experiment {self.experiment!r}")
        info = _field(run, "run", "info")
        keys = ("run_id", "artifact_uri")
        if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in keys):
            raise _unexpected(run)
        return info["run_id"], info["artifact_uri"]

    async def _upload(self, path: str, content: Path | bytes) -> None:
        data = (
            content if isinstance(content, bytes) else await asyncio.to_thread(content.read_bytes)
        )
        what = f"uploading {path}"
        response = await self._retried(what, "PUT", f"{_ARTIFACTS}/{quote(path)}", content=data)
        _check(response, what)

    async def _create_version(self, name: str, source: str, run_id: str) -> str:
        """Create the version (never retried: a second try could make a second version) and
        wait until the server calls it READY."""
        what = f"model {name!r}: new version from run {run_id}"
        body = {"name": name, "source": source, "run_id": run_id}
        try:
            response = await self._client.post(f"{_API}/model-versions/create", json=body)
        except httpx.TransportError as exc:
            raise RegistryUnavailableError(f"{what}: {exc!r}; nothing registered") from exc
        _check(response, what)
        details = _field(response, "model_version")
        if not isinstance(details, dict):
            raise _unexpected(response)
        version = _version_number(response, details.get("version"))
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while details.get("status", "READY") == "PENDING_REGISTRATION":
            if time.monotonic() > deadline:
                raise RegistryUnavailableError(f"{what}: still pending after {_READY_TIMEOUT_S} s")
            await asyncio.sleep(self._backoff_s)
            details = await self._version(name, version)
        if details.get("status", "READY") != "READY":
            raise RegistryError(f"{what}: {details.get('status')} {details.get('status_message')}")
        return version

    async def _delete_versions_of_run(self, name: str, run_id: str) -> None:
        try:
            response = await self._get(
                f"{_API}/model-versions/search",
                filter=f"name={_quoted(name)} and run_id='{run_id}'",
            )
            for entry in _entries(response, "model_versions"):
                version = _version_number(response, entry.get("version"))
                await self._send("DELETE", "model-versions/delete", name=name, version=version)
        except (httpx.HTTPError, RegistryError):
            log.warning("model %s: could not remove a version of run %s", name, run_id)

    async def _delete_run(self, run_id: str) -> None:
        try:
            await self._send("POST", "runs/delete", run_id=run_id)
        except (httpx.HTTPError, RegistryError):
            log.warning("could not delete run %s of a failed registration", run_id)

    async def _send(self, method: str, endpoint: str, /, **body: object) -> httpx.Response:
        """A write that may be repeated (creates answer 'already exists'), retried like ``_get``."""
        return await self._retried(endpoint, method, f"{_API}/{endpoint}", json=body)

    async def _retried(self, what: str, method: str, url: str, **options: Any) -> httpx.Response:
        """One request, tried again as ``_retrying`` says; any answer under 500 is returned."""

        async def attempt() -> httpx.Response:
            response = await self._client.request(method, url, **options)
            _raise_if_unavailable(response)
            return response

        return await self._retrying(what, attempt)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """``attempt()``, with exponential backoff while it fails on a connection error, a
        timeout or a 5xx answer (RegistryUnavailableError); any other outcome is its own."""
        last: Exception | None = None
        for number in range(self._retries + 1):
            if number:
                await asyncio.sleep(self._backoff_s * 2 ** (number - 1))
            try:
                return await attempt()
            except (httpx.TransportError, RegistryUnavailableError) as exc:
                last = exc
        problem = str(last) if isinstance(last, RegistryError) else repr(last)
        raise RegistryUnavailableError(
            f"MLflow registry at {self.base_url} unreachable after {self._retries + 1} tries "
            f"({what}): {problem}"
        ) from last

    # -- registry calls -----------------------------------------------------------------------

    async def _require_version(self, name: str, version: str) -> None:
        if version.isdigit():
            response = await self._get(f"{_API}/model-versions/get", name=name, version=version)
            if response.status_code == 200:
                return
            if not _not_found(response):
                _check(response, f"model {name!r} version {version!r}")
        await self._require_model(name)
        raise VersionNotFoundError(f"model {name!r} has no version {version!r}")

    async def _require_model(self, name: str) -> None:
        response = await self._get(f"{_API}/registered-models/get", name=name)
        if _not_found(response):
            raise ModelNotFoundError(f"model {name!r} is not in the MLflow registry")
        _check(response, f"model {name!r}")

    async def _latest(self, name: str) -> str:
        response = await self._get(
            f"{_API}/model-versions/search",
            filter=f"name={_quoted(name)}",
            order_by="version_number DESC",
            max_results="1",
        )
        _check(response, f"versions of {name!r}")
        versions = _entries(response, "model_versions")
        if not versions:
            raise VersionNotFoundError(f"model {name!r} has no versions")
        return _version_number(response, versions[0].get("version"))

    async def _artifact_path(self, name: str, version: str) -> str:
        """The version's artifact folder as a path for the artifact proxy."""
        what = f"model {name} version {version}"
        download_uri = f"{_API}/model-versions/get-download-uri"
        response = await self._get(download_uri, name=name, version=version)
        _check(response, what)
        return await self._proxy_path(str(_field(response, "artifact_uri")), what)

    async def _proxy_path(self, uri: str, what: str) -> str:
        """An artifact URI (``mlflow-artifacts:``, ``runs:/``, ``models:/m-``) as a proxy path."""
        if uri.startswith("runs:/"):
            run_id, _, sub = uri.removeprefix("runs:/").partition("/")
            run = await self._get(f"{_API}/runs/get", run_id=run_id)
            _check(run, f"{what}: run {run_id}")
            uri = _join(str(_field(run, "run", "info", "artifact_uri")), sub)
        elif uri.startswith("models:/m-"):
            model_id, _, sub = uri.removeprefix("models:/").partition("/")
            logged = await self._get(f"{_API}/logged-models/{quote(model_id)}")
            _check(logged, f"{what}: logged model {model_id}")
            uri = _join(str(_field(logged, "model", "info", "artifact_uri")), sub)
        if not uri.startswith("mlflow-artifacts:"):
            raise RegistryError(
                f"{what}: artifacts at {uri!r} are not served by the MLflow artifact proxy "
                "(start the server with --artifacts-destination)"
            )
        return urlsplit(uri).path.strip("/")

    async def _read_artifact(self, path: str) -> bytes | None:
        response = await self._get(f"{_ARTIFACTS}/{quote(path)}")
        if response.status_code == 404:
            return None
        _check(response, f"artifact {path}")
        return response.content

    async def _version(self, name: str, version: str) -> dict[str, Any]:
        response = await self._get(f"{_API}/model-versions/get", name=name, version=version)
        if _not_found(response):
            await self._require_version(name, version)  # says what is missing
        _check(response, f"model {name!r} version {version!r}")
        details = _field(response, "model_version")
        if not isinstance(details, dict):
            raise RegistryError(f"unexpected answer from MLflow at {response.url}")
        return details

    async def _set_tag(self, name: str, version: str, key: str, value: str) -> None:
        body = {"name": name, "version": version, "key": key, "value": value}
        response = await self._client.post(f"{_API}/model-versions/set-tag", json=body)
        _check(response, f"model {name!r} version {version!r}: tag {key!r}")

    async def _list(self, path: str) -> dict[str, int]:
        """Every file under ``path`` (relative path -> listed size, -1 if none), folder by
        folder; more than ``_MAX_ENTRIES`` files and folders in all, or folders nested deeper
        than ``_MAX_DEPTH``, are a CorruptModelError."""
        files: dict[str, int] = {}
        folders = [""]
        listed = 0
        while folders:
            prefix = folders.pop()
            response = await self._get(_ARTIFACTS, path=f"{path}/{prefix}".rstrip("/"))
            _check(response, f"artifacts at {path}")
            entries = _entries(response, "files")
            listed += len(entries)
            if listed > _MAX_ENTRIES:
                raise CorruptModelError(
                    f"artifacts at {path}: more than {_MAX_ENTRIES} files and folders (a model "
                    "version's folder holds a few); register the model's folder, not a run's "
                    "whole artifacts"
                )
            for entry in entries:
                if not isinstance(entry.get("path"), str):
                    raise _unexpected(response)
                # the proxy lists names relative to the folder asked for
                name = entry["path"].rsplit("/", 1)[-1]
                if name in ("", ".", ".."):
                    continue
                relative = f"{prefix}/{name}" if prefix else name
                if not entry.get("is_dir"):
                    files[relative] = _file_size(response, entry.get("file_size"))
                elif relative.count("/") >= _MAX_DEPTH:
                    raise CorruptModelError(
                        f"artifacts at {path}: folders nested deeper than {_MAX_DEPTH} levels "
                        f"({relative[:200]}...)"
                    )
                else:
                    folders.append(relative)
        return files

    async def _download(self, path: str, local: Path, size: int, what: str) -> None:
        written = await self._retrying(
            f"downloading {path}", lambda: self._stream_to_file(path, local, what, size)
        )
        if size >= 0 and written != size:
            raise CorruptModelError(
                f"{what}: {path} has {written} bytes, the registry lists {size}"
            )

    async def _stream_to_file(self, path: str, local: Path, what: str, size: int = -1) -> int:
        """Write the artifact to ``local``; one that runs past its listed ``size`` (when known)
        is a CorruptModelError as soon as it does, not after the disk is full."""
        async with self._client.stream("GET", f"{_ARTIFACTS}/{quote(path)}") as response:
            if response.status_code == 404:
                raise CorruptModelError(f"{what}: {path} is listed but cannot be downloaded")
            if response.status_code >= 400:
                await response.aread()
                _raise_if_unavailable(response)
                _check(response, f"artifact {path}")
            try:
                await asyncio.to_thread(local.parent.mkdir, parents=True, exist_ok=True)
                fh = await asyncio.to_thread(local.open, "wb")
            except (OSError, ValueError) as exc:  # a name this file system refuses (NUL, long)
                raise CorruptModelError(
                    f"{what}: artifact {path[:300]!r} cannot be stored as a file: {exc}"
                ) from exc
            written = 0
            try:
                async for chunk in response.aiter_bytes(_CHUNK_BYTES):
                    written += len(chunk)
                    if 0 <= size < written:
                        raise CorruptModelError(
                            f"{what}: {path} runs past the {size} bytes the registry lists"
                        )
                    await asyncio.to_thread(fh.write, chunk)
            finally:
                fh.close()
            return written

    async def _get(self, endpoint: str, /, **params: str) -> httpx.Response:
        """GET with exponential backoff on connection errors, timeouts and 5xx answers."""
        return await self._retried(endpoint, "GET", endpoint, params=params)


def _staging_dir(cache_dir: Path, prefix: str) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=cache_dir))


def _cached(target: Path, what: str) -> VersionFiles | None:
    """The description of a complete cached copy, or None (absent, unfinished or changed)."""
    try:
        expected = int((target / _COMPLETE).read_text())
        files = describe_version_dir(target, what)
        if (target / files.model_file).stat().st_size != expected:
            return None
    except (OSError, ValueError, RegistryError):
        return None
    return files


def _install(name: str, version: str, staging: Path, target: Path) -> VersionFiles:
    """Verify a downloaded folder and rename it into place (a concurrent fetch may win)."""
    files = verify_version_dir(name, version, staging)
    (staging / _COMPLETE).write_text(str((staging / files.model_file).stat().st_size))
    target.parent.mkdir(parents=True, exist_ok=True)
    installed = _cached(target, f"model {name} version {version}")
    if installed is not None:
        shutil.rmtree(staging, ignore_errors=True)
        return installed
    if target.exists():  # an unfinished or changed earlier copy
        shutil.rmtree(target)
    os.replace(staging, target)
    return files


def _model_folder(what: str, files: dict[str, int]) -> str:
    """'' when the model sits at the artifact root, else the one subfolder that holds it (an
    ``MLmodel`` file, or ``model.onnx`` without one)."""
    for marker in (MLMODEL_FILE, MODEL_FILE):
        if marker in files:
            return ""
        holders = [p.removesuffix("/" + marker) for p in files if p.endswith("/" + marker)]
        holders = [h for h in holders if "/" not in h]
        if len(holders) == 1:
            return holders[0]
    raise CorruptModelError(
        f"{what}: no {MODEL_FILE} or {MLMODEL_FILE} at the root of its artifacts or in "
        f"exactly one direct subfolder (found {sorted(files)})"
    )


def _cache_folder(name: str) -> str:
    """The model's folder in the cache: its name URL-encoded (any character MLflow allows is
    then a safe file name), shortened with a digest of the name past 200 characters."""
    encoded = quote(name, safe=" ")
    if len(encoded) <= 200:
        return encoded
    return f"{encoded[:150]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _quoted(value: str) -> str:
    """A string literal for MLflow's search filter."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise RegistryError(f"model name {value!r} holds both quote characters; use an alias")


def _join(uri: str, sub: str) -> str:
    return f"{uri.rstrip('/')}/{sub}" if sub else uri


def _not_found(response: httpx.Response) -> bool:
    # A missing model is 404 RESOURCE_DOES_NOT_EXIST; a missing alias of an existing model is
    # 400 INVALID_PARAMETER_VALUE "... alias x not found." (MLflow 3).
    if response.status_code == 404:
        return True
    return response.status_code == 400 and "not found" in _message(response).lower()


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 500:
        raise RegistryUnavailableError(f"MLflow: {what}: {response.status_code}")
    if response.status_code >= 400:
        raise RegistryError(f"MLflow: {what}: {response.status_code} {_message(response)}")


def _raise_if_unavailable(response: httpx.Response) -> None:
    """A 5xx answer as the RegistryUnavailableError that ``_retrying`` tries again on."""
    if response.status_code >= 500:
        raise RegistryUnavailableError(f"{response.status_code} {_message(response)}")


def _field(response: httpx.Response, *keys: str) -> Any:
    """``response.json()[k1][k2]...``; an answer of another shape is a RegistryError."""
    try:
        value: Any = response.json()
        for key in keys:
            value = value[key]
    except (ValueError, KeyError, TypeError) as exc:
        raise _unexpected(response) from exc
    return value


def _unexpected(response: httpx.Response) -> RegistryError:
    return RegistryError(
        f"unexpected answer from MLflow at {response.url}: {response.text[:200]!r}"
    )


def _entries(response: httpx.Response, *keys: str) -> list[dict[str, Any]]:
    """The list of objects at ``response.json()[k1][k2]...`` ([] where absent); an answer of
    another shape is a RegistryError."""
    value: Any = _field(response)
    for key in keys:
        if not isinstance(value, dict):
            raise _unexpected(response)
        value = value.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise _unexpected(response)
    return value


def _version_number(response: httpx.Response, value: object) -> str:
    """A version number as MLflow gives it (a number, or digits in a string) as text; anything
    else is a RegistryError."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return value
    raise _unexpected(response)


def _file_size(response: httpx.Response, value: object) -> int:
    """A listed file size (a number, or digits in a string, as MLflow writes int64); -1 when
    absent or negative (not checked then); anything else is a RegistryError."""
    if value is None:
        return -1
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, -1)
    raise _unexpected(response)


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error_code", ""))
    except (ValueError, AttributeError):
        return ""


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text[:200]))
    except (ValueError, AttributeError):
        return response.text[:200]
