"""Registry writes (register_version, set_alias, get_aliases) on the local registry and on a real
``mlflow server``: what is registered is fetched whole, and a failed registration leaves nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest

from registry_client import (
    LocalRegistry,
    ModelMetadata,
    ModelNotFoundError,
    ModelRef,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
)
from registry_client.metadata import file_sha256
from registry_client.mlflow import MlflowRegistry


def _source(demo_registry: Path) -> tuple[Path, ModelMetadata]:
    folder = demo_registry / "breast_cancer" / "2"
    metadata = ModelMetadata.load(folder).model_copy(update={"model_sha256": None})
    return folder / "model.onnx", metadata


async def test_local_register_version_with_documents_then_aliases(
    demo_registry: Path, tmp_path: Path
) -> None:
    model_file, metadata = _source(demo_registry)
    registry = LocalRegistry(tmp_path / "registry")
    report = json.dumps({"accuracy": 0.97}).encode()
    first = await registry.register_version("m", model_file, metadata, {"report.json": report})
    second = await registry.register_version("m", model_file, metadata)
    assert (first, second) == ("1", "2")
    fetched = await registry.fetch("m", first)
    assert fetched.metadata.model_sha256 == file_sha256(model_file)
    assert fetched.metadata.class_labels == metadata.class_labels
    assert await registry.read_document("m", first, "report.json") == report
    assert await registry.read_document("m", second, "report.json") is None

    assert await registry.get_aliases("m") == {}
    await registry.set_alias("m", "champion", first)
    await registry.set_alias("m", "candidate", second)
    await registry.set_alias("m", "champion", second)
    assert await registry.get_aliases("m") == {"champion": "2", "candidate": "2"}
    assert await registry.resolve(ModelRef.parse("m@champion")) == "2"
    with pytest.raises(VersionNotFoundError, match="no version '9'"):
        await registry.set_alias("m", "champion", "9")
    with pytest.raises(ModelNotFoundError):
        await registry.get_aliases("other")


async def test_local_failed_registration_leaves_no_version(
    demo_registry: Path, tmp_path: Path
) -> None:
    model_file, metadata = _source(demo_registry)
    registry = LocalRegistry(tmp_path / "registry")
    await registry.register_version("m", model_file, metadata)
    for documents in ({"metadata.json": b"{}"}, {"../x": b""}, {".hidden": b""}):
        with pytest.raises(RegistryError, match="invalid document name"):
            await registry.register_version("m", model_file, metadata, documents)
    with pytest.raises(FileNotFoundError):
        await registry.register_version("m", tmp_path / "missing.onnx", metadata)
    assert registry.versions("m") == ["1"]
    assert [p.name for p in (tmp_path / "registry" / "m").iterdir()] == ["1"]  # no staging left


async def test_local_concurrent_registrations_get_distinct_versions(
    demo_registry: Path, tmp_path: Path
) -> None:
    model_file, metadata = _source(demo_registry)
    registry = LocalRegistry(tmp_path / "registry")
    versions = await asyncio.gather(
        *(registry.register_version("m", model_file, metadata) for _ in range(8))
    )
    assert sorted(versions, key=int) == [str(i) for i in range(1, 9)]
    for version in versions:
        assert (await registry.fetch("m", version)).model_file.is_file()


async def test_mlflow_register_version_is_fetched_whole_with_documents(
    mlflow_url: str, demo_registry: Path, tmp_path: Path
) -> None:
    model_file, metadata = _source(demo_registry)
    name = f"writes-{uuid.uuid4().hex[:8]}"
    report = json.dumps({"accuracy": 0.97}).encode()
    writer = MlflowRegistry(mlflow_url, tmp_path / "writer-cache", backoff_s=0.01)
    reader = MlflowRegistry(mlflow_url, tmp_path / "reader-cache", backoff_s=0.01)
    try:
        first = await writer.register_version(name, model_file, metadata, {"report.json": report})
        second = await writer.register_version(name, model_file, metadata)
        assert (first, second) == ("1", "2")
        fetched = await reader.fetch(name, first)
        assert fetched.model_file.read_bytes() == model_file.read_bytes()
        assert fetched.metadata.model_sha256 == file_sha256(model_file)
        assert fetched.metadata.features == metadata.features
        assert await reader.read_document(name, first, "report.json") == report
        assert await reader.read_document(name, second, "report.json") is None

        assert await reader.get_aliases(name) == {}
        await writer.set_alias(name, "champion", first)
        await writer.set_alias(name, "candidate", second)
        await writer.set_alias(name, "champion", second)
        assert await reader.get_aliases(name) == {"champion": "2", "candidate": "2"}
        assert await reader.resolve(ModelRef.parse(f"{name}@champion")) == "2"
        with pytest.raises(VersionNotFoundError, match="no version '9'"):
            await writer.set_alias(name, "champion", "9")
        with pytest.raises(ModelNotFoundError):
            await reader.get_aliases(f"{name}-absent")
        with pytest.raises(RegistryError, match="invalid document name"):
            await writer.register_version(name, model_file, metadata, {"model.onnx": b""})
    finally:
        await writer.aclose()
        await reader.aclose()


class _LoseAnswer(httpx.AsyncBaseTransport):
    """Forwards every request to the server, but loses the answer to the one named: the server
    did the work, the client never hears of it."""

    def __init__(self, method: str, path_part: str) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._method = method
        self._part = path_part

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == self._method and self._part in request.url.path:
            await response.aread()
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _UploadsFailFirst(httpx.AsyncBaseTransport):
    """Forwards every request to the server, but the first artifact upload is answered 503 and
    the second never reaches it (a connection error): both are for the client to retry."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.uploads = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "mlflow-artifacts/artifacts" in request.url.path:
            self.uploads += 1
            if self.uploads == 1:
                return httpx.Response(503, json={"message": "busy"})
            if self.uploads == 2:
                raise httpx.ConnectError("connection refused", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_mlflow_uploads_are_retried_on_5xx_and_connection_errors(
    mlflow_url: str, demo_registry: Path, tmp_path: Path
) -> None:
    model_file, metadata = _source(demo_registry)
    name = f"upload-{uuid.uuid4().hex[:8]}"
    transport = _UploadsFailFirst()
    writer = MlflowRegistry(
        mlflow_url, tmp_path / "writer", retries=2, backoff_s=0.01, transport=transport
    )
    reader = MlflowRegistry(mlflow_url, tmp_path / "reader", backoff_s=0.01)
    try:
        version = await writer.register_version(name, model_file, metadata)
        assert transport.uploads >= 3, "the model file was tried three times"
        fetched = await reader.fetch(name, version)
        assert fetched.model_file.read_bytes() == model_file.read_bytes()
    finally:
        await writer.aclose()
        await reader.aclose()


async def _versions(url: str, name: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get(
            "/api/2.0/mlflow/model-versions/search", params={"filter": f"name='{name}'"}
        )
        response.raise_for_status()
        found: list[dict[str, object]] = response.json().get("model_versions", [])
        return found


async def _active_runs(url: str, name: str) -> int:
    """Runs of this model's registrations that are not deleted."""
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get(
            "/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": "model-gateway registrations"},
        )
        response.raise_for_status()
        experiment_id = response.json()["experiment"]["experiment_id"]
        response = await client.post(
            "/api/2.0/mlflow/runs/search",
            json={
                "experiment_ids": [experiment_id],
                "filter": f"attributes.run_name = 'register {name}'",
                "run_view_type": "ACTIVE_ONLY",
            },
        )
        response.raise_for_status()
        return len(response.json().get("runs", []))


@pytest.mark.parametrize(
    "lost", [("POST", "model-versions/create"), ("PUT", "mlflow-artifacts/artifacts")]
)
async def test_mlflow_failed_registration_leaves_no_version(
    mlflow_url: str, demo_registry: Path, tmp_path: Path, lost: tuple[str, str]
) -> None:
    model_file, metadata = _source(demo_registry)
    name = f"atomic-{uuid.uuid4().hex[:8]}"
    good = MlflowRegistry(mlflow_url, tmp_path / "cache", backoff_s=0.01)
    flaky = MlflowRegistry(mlflow_url, tmp_path / "cache", retries=0, transport=_LoseAnswer(*lost))
    try:
        assert await good.register_version(name, model_file, metadata) == "1"
        with pytest.raises(RegistryUnavailableError):
            await flaky.register_version(name, model_file, metadata, {"report.json": b"{}"})
        assert [v["version"] for v in await _versions(mlflow_url, name)] == ["1"]
        assert await _active_runs(mlflow_url, name) == 1
        # the next registration goes on as if the failed one never happened
        assert await good.register_version(name, model_file, metadata) in ("2", "3")
        assert len(await _versions(mlflow_url, name)) == 2
        assert await _active_runs(mlflow_url, name) == 2
    finally:
        await good.aclose()
        await flaky.aclose()


async def test_local_keyed_registration_returns_the_version_the_key_made(
    demo_registry: Path, tmp_path: Path
) -> None:
    model_file, metadata = _source(demo_registry)
    registry = LocalRegistry(tmp_path / "registry")
    first = await registry.register_version("m", model_file, metadata, key="job-1")
    # the writer died before it learnt the answer, and asks again on restart
    assert await registry.register_version("m", model_file, metadata, key="job-1") == first
    other = await registry.register_version("m", model_file, metadata, key="job-2")
    unkeyed = await registry.register_version("m", model_file, metadata)
    assert (first, other, unkeyed) == ("1", "2", "3")
    assert registry.versions("m") == ["1", "2", "3"]
    assert (await registry.fetch("m", first)).metadata.class_labels == metadata.class_labels


async def test_mlflow_keyed_registration_returns_the_version_the_key_made(
    mlflow_url: str, demo_registry: Path, tmp_path: Path
) -> None:
    model_file, metadata = _source(demo_registry)
    name = f"keyed-{uuid.uuid4().hex[:8]}"
    registry = MlflowRegistry(mlflow_url, tmp_path / "cache", backoff_s=0.01)
    try:
        # a writer that died after creating its tagged run, before any version: its run goes
        await registry.register_version(name, model_file, metadata)  # the experiment exists
        async with httpx.AsyncClient(base_url=mlflow_url) as client:
            experiment = await client.get(
                "/api/2.0/mlflow/experiments/get-by-name",
                params={"experiment_name": "model-gateway registrations"},
            )
            created = await client.post(
                "/api/2.0/mlflow/runs/create",
                json={
                    "experiment_id": experiment.json()["experiment"]["experiment_id"],
                    "run_name": f"register {name}",
                    "tags": [{"key": "model_gateway.registration_key", "value": "job-7"}],
                },
            )
            created.raise_for_status()
        assert await _active_runs(mlflow_url, name) == 2
        keyed = await registry.register_version(name, model_file, metadata, key="job-7")
        assert keyed == "2"
        assert await _active_runs(mlflow_url, name) == 2  # the dead writer's run was deleted
        # asked again (the writer died before it learnt the answer): the same version
        assert await registry.register_version(name, model_file, metadata, key="job-7") == "2"
        assert await registry.register_version(name, model_file, metadata, key="job-8") == "3"
        versions = sorted(str(v["version"]) for v in await _versions(mlflow_url, name))
        assert versions == ["1", "2", "3"]
    finally:
        await registry.aclose()
