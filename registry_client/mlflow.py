"""MLflow Model Registry over its REST API (httpx only; this package never imports mlflow).

Aliases and versions resolve through the registered-model API. A version's artifacts download
through the MLflow artifact proxy (``mlflow-artifacts:`` URIs, also behind ``runs:/`` sources),
are checked against the listed sizes and the metadata's sha256, and are cached under
``cache_dir/<model>/<version>/``, which appears whole (renamed into place) or not at all.

Layout expected in the version's artifact folder: ``model.onnx`` (and ``metadata.json``) at
its root, or in one direct subfolder (as ``mlflow.log_artifacts(dir, "model")`` leaves them).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from registry_client.base import ModelVersion, Registry, verify_version_dir
from registry_client.errors import (
    CorruptModelError,
    ModelNotFoundError,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
)
from registry_client.metadata import MODEL_FILE
from registry_client.reference import ModelRef

__all__ = ["MlflowRegistry"]

_API = "/api/2.0/mlflow"
_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
_COMPLETE = ".complete"


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self._retries = retries
        self._backoff_s = backoff_s
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def resolve(self, ref: ModelRef) -> str:
        if ref.version is not None:
            await self._model_version(ref.name, ref.version)
            return ref.version
        assert ref.alias is not None
        response = await self._get(
            f"{_API}/registered-models/alias", {"name": ref.name, "alias": ref.alias}
        )
        if response.status_code == 200:
            return str(response.json()["model_version"]["version"])
        await self._require_model(ref.name)  # ModelNotFoundError if the model is the problem
        if ref.alias == "latest":
            return await self._latest(ref.name)
        raise VersionNotFoundError(f"model {ref.name!r} has no alias {ref.alias!r}")

    async def fetch(self, name: str, version: str) -> ModelVersion:
        ModelRef.parse(f"{name}/{version}")  # rejects path tricks
        target = self.cache_dir / name / version
        if (target / _COMPLETE).exists():
            metadata = await asyncio.to_thread(verify_version_dir, name, version, target)
            return ModelVersion(name, version, target, metadata)
        await self._model_version(name, version)
        source = await self._artifact_path(name, version)
        files = await self._list(source)
        folder = _model_folder(name, version, files)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=self.cache_dir))
        try:
            for path, size in files.items():
                if folder and not path.startswith(folder + "/"):
                    continue
                local = staging / (path[len(folder) + 1 :] if folder else path)
                await self._download(f"{source}/{path}", local, size, name, version)
            metadata = await asyncio.to_thread(verify_version_dir, name, version, staging)
            (staging / _COMPLETE).touch()
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # an incomplete earlier download
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ModelVersion(name, version, target, metadata)

    # -- registry calls -----------------------------------------------------------------------

    async def _model_version(self, name: str, version: str) -> dict[str, Any]:
        response = await self._get(f"{_API}/model-versions/get", {"name": name, "version": version})
        if response.status_code == 200:
            result: dict[str, Any] = response.json()["model_version"]
            return result
        await self._require_model(name)
        raise VersionNotFoundError(f"model {name!r} has no version {version!r}")

    async def _require_model(self, name: str) -> None:
        response = await self._get(f"{_API}/registered-models/get", {"name": name})
        if response.status_code == 404 or _code(response) == "RESOURCE_DOES_NOT_EXIST":
            raise ModelNotFoundError(f"model {name!r} is not in the MLflow registry")
        self._check(response, f"model {name!r}")

    async def _latest(self, name: str) -> str:
        response = await self._get(f"{_API}/model-versions/search", {"filter": f"name='{name}'"})
        self._check(response, f"versions of {name!r}")
        versions = [str(v["version"]) for v in response.json().get("model_versions", [])]
        if not versions:
            raise VersionNotFoundError(f"model {name!r} has no versions")
        return max(versions, key=lambda v: (v.isdigit(), int(v) if v.isdigit() else 0, v))

    async def _artifact_path(self, name: str, version: str) -> str:
        """The version's artifact folder as a path for the artifact proxy."""
        response = await self._get(
            f"{_API}/model-versions/get-download-uri", {"name": name, "version": version}
        )
        self._check(response, f"model {name} version {version}")
        uri = str(response.json()["artifact_uri"])
        if uri.startswith("runs:/"):
            run_id, _, sub = uri[len("runs:/") :].partition("/")
            run = await self._get(f"{_API}/runs/get", {"run_id": run_id})
            self._check(run, f"run {run_id}")
            uri = f"{run.json()['run']['info']['artifact_uri'].rstrip('/')}/{sub}"
        if not uri.startswith("mlflow-artifacts:"):
            raise RegistryError(
                f"model {name} version {version}: artifacts at {uri!r} are not served by the "
                "MLflow artifact proxy (start the server with --artifacts-destination)"
            )
        return uri[len("mlflow-artifacts:") :].lstrip("/").rstrip("/")

    async def _list(self, path: str, prefix: str = "") -> dict[str, int]:
        """Every file under ``path`` (relative path -> size), recursively."""
        response = await self._get(_ARTIFACTS, {"path": f"{path}/{prefix}".rstrip("/")})
        self._check(response, f"artifacts at {path}")
        files: dict[str, int] = {}
        for entry in response.json().get("files", []):
            # the proxy lists names relative to the folder asked for
            name = str(entry["path"]).rsplit("/", 1)[-1]
            relative = f"{prefix}/{name}" if prefix else name
            if entry.get("is_dir"):
                files.update(await self._list(path, relative))
            else:
                files[relative] = int(entry.get("file_size", -1))
        return files

    async def _download(self, path: str, local: Path, size: int, name: str, version: str) -> None:
        url = f"{_ARTIFACTS}/{quote(path)}"
        for attempt in range(self._retries + 1):
            try:
                async with self._client.stream("GET", url) as response:
                    if response.status_code == 404:
                        raise CorruptModelError(f"model {name} version {version}: {path} is gone")
                    self._check(response, f"artifact {path}")
                    local.parent.mkdir(parents=True, exist_ok=True)
                    written = 0
                    with local.open("wb") as fh:
                        async for chunk in response.aiter_bytes(1 << 20):
                            fh.write(chunk)
                            written += len(chunk)
                if size >= 0 and written != size:
                    raise CorruptModelError(
                        f"model {name} version {version}: {path} has {written} bytes, "
                        f"the registry lists {size}"
                    )
                return
            except (httpx.TransportError, RegistryUnavailableError) as exc:
                if attempt == self._retries:
                    raise RegistryUnavailableError(
                        f"MLflow at {self.base_url}: downloading {path} failed: {exc}"
                    ) from exc
                await asyncio.sleep(self._backoff_s * 2**attempt)

    async def _get(self, path: str, params: dict[str, str]) -> httpx.Response:
        """GET with retries on connection errors and 5xx answers."""
        for attempt in range(self._retries + 1):
            try:
                response = await self._client.get(path, params=params)
                if response.status_code < 500:
                    return response
                problem = f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                problem = repr(exc)
            if attempt < self._retries:
                await asyncio.sleep(self._backoff_s * 2**attempt)
        raise RegistryUnavailableError(
            f"MLflow registry at {self.base_url} unreachable after {self._retries + 1} tries: "
            f"{problem}"
        )

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.status_code >= 500:
            raise RegistryUnavailableError(
                f"MLflow at {self.base_url}: {what}: {response.status_code}"
            )
        if response.status_code >= 400:
            raise RegistryError(f"MLflow: {what}: {_message(response)}")


def _model_folder(name: str, version: str, files: dict[str, int]) -> str:
    """'' when model.onnx sits at the artifact root, else the one subfolder that holds it."""
    if MODEL_FILE in files:
        return ""
    holders = [p[: -len(MODEL_FILE) - 1] for p in files if p.endswith("/" + MODEL_FILE)]
    holders = [h for h in holders if "/" not in h]
    if len(holders) == 1:
        return holders[0]
    raise CorruptModelError(
        f"model {name} version {version}: no {MODEL_FILE} in its artifacts ({sorted(files)})"
    )


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error_code", ""))
    except ValueError:
        return ""


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text[:200]
