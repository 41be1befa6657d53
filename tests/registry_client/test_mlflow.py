"""The MLflow backend against a real ``mlflow server``."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from registry_client import (
    CorruptModelError,
    ModelNotFoundError,
    ModelRef,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
)
from registry_client.mlflow import MlflowRegistry
from tests._mlflow_server import register_in_mlflow, set_alias
from tests._support import free_port


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_resolve_fetch_cache_and_alias_moves(
    mlflow_url: str, demo_registry: Path, tmp_path: Path
) -> None:
    name = unique("bc")
    v1 = register_in_mlflow(mlflow_url, name, demo_registry / "breast_cancer" / "1", "champion")
    v2 = register_in_mlflow(mlflow_url, name, demo_registry / "breast_cancer" / "2")
    registry = MlflowRegistry(mlflow_url, tmp_path / "cache", backoff_s=0.01)
    try:
        assert await registry.resolve(ModelRef.parse(f"{name}@champion")) == v1
        assert await registry.resolve(ModelRef.parse(f"{name}/{v2}")) == v2
        assert await registry.resolve(ModelRef.parse(name)) == v2  # latest
        version = await registry.get(ModelRef.parse(f"{name}@champion"))
        assert version.metadata.class_labels == ["malignant", "benign"]
        session = ort.InferenceSession(str(version.model_file))
        (label, _) = session.run(None, {"input": np.zeros((1, 30), np.float32)})
        assert label.shape == (1,)
        set_alias(mlflow_url, name, "champion", v2)
        assert await registry.resolve(ModelRef.parse(f"{name}@champion")) == v2
        # a cached copy that changed on disk is downloaded again
        version.model_file.write_bytes(b"truncated")
        again = await registry.fetch(name, v1)
        assert again.model_file.stat().st_size > len(b"truncated")
    finally:
        await registry.aclose()
        await registry.aclose()  # safe twice

    # a second fetch is served from the verified cache, even with the server out of reach
    offline = MlflowRegistry(f"http://127.0.0.1:{free_port()}", tmp_path / "cache", retries=0)
    try:
        cached = await offline.fetch(name, v1)
        assert cached.model_file.read_bytes() == version.model_file.read_bytes()
    finally:
        await offline.aclose()


async def test_clear_errors(mlflow_url: str, demo_registry: Path, tmp_path: Path) -> None:
    name = unique("errors")
    register_in_mlflow(mlflow_url, name, demo_registry / "breast_cancer" / "1", "champion")
    registry = MlflowRegistry(mlflow_url, tmp_path / "cache", backoff_s=0.01)
    try:
        with pytest.raises(ModelNotFoundError, match="not in the MLflow registry"):
            await registry.resolve(ModelRef.parse(f"{unique('nope')}@champion"))
        with pytest.raises(VersionNotFoundError, match="no alias 'staging'"):
            await registry.resolve(ModelRef.parse(f"{name}@staging"))
        with pytest.raises(VersionNotFoundError, match="no version '42'"):
            await registry.fetch(name, "42")
        with pytest.raises(VersionNotFoundError, match="no version 'abc'"):
            await registry.resolve(ModelRef.parse(f"{name}/abc"))
        with pytest.raises(ModelNotFoundError):
            await registry.fetch(unique("nope"), "1")
        # a request MLflow rejects for another reason keeps MLflow's message
        with pytest.raises(RegistryError, match="Invalid alias name") as info:
            await registry.resolve(ModelRef.parse(f"{name}@bad.alias"))
        assert type(info.value) is RegistryError
    finally:
        await registry.aclose()


@pytest.mark.parametrize("source", ["runs", "run-root", "logged-model"])
async def test_every_kind_of_version_source_is_fetched(
    source: Literal["runs", "run-root", "logged-model"],
    mlflow_url: str,
    demo_registry: Path,
    tmp_path: Path,
) -> None:
    name = unique(source)
    version_dir = demo_registry / "breast_cancer" / "1"
    version = register_in_mlflow(mlflow_url, name, version_dir, source=source)
    registry = MlflowRegistry(mlflow_url, tmp_path / "cache", backoff_s=0.01)
    try:
        fetched = await registry.fetch(name, version)
    finally:
        await registry.aclose()
    assert fetched.model_file.read_bytes() == (version_dir / "model.onnx").read_bytes()
    assert fetched.metadata.class_labels == ["malignant", "benign"]


async def test_token_is_sent_and_server_errors_are_retried(tmp_path: Path) -> None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if len(seen) < 3:
            return httpx.Response(503, json={"message": "busy"})
        return httpx.Response(200, json={"model_version": {"name": "m", "version": "7"}})

    registry = MlflowRegistry(
        "http://mlflow.test", tmp_path, token="s3cr3t", backoff_s=0.0,
        transport=httpx.MockTransport(answer),
    )  # fmt: skip
    try:
        assert await registry.resolve(ModelRef.parse("m@champion")) == "7"
    finally:
        await registry.aclose()
    assert seen == ["Bearer s3cr3t"] * 3


async def test_unreachable_registry_is_retried_then_reported(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    registry = MlflowRegistry(url, tmp_path / "cache", retries=2, backoff_s=0.01)
    try:
        with pytest.raises(RegistryUnavailableError, match="after 3 tries") as info:
            await registry.resolve(ModelRef.parse("m@champion"))
        assert info.value.retriable
    finally:
        await registry.aclose()


async def test_missing_or_tampered_model_file_is_corrupt(
    mlflow_url: str, demo_registry: Path, tmp_path: Path
) -> None:
    name = unique("corrupt")
    no_model = tmp_path / "no-model"
    no_model.mkdir()
    shutil.copy(demo_registry / "breast_cancer" / "1" / "metadata.json", no_model)
    missing = register_in_mlflow(mlflow_url, name, no_model)
    tampered_dir = tmp_path / "tampered"
    shutil.copytree(demo_registry / "breast_cancer" / "1", tampered_dir)
    (tampered_dir / "model.onnx").write_bytes(b"not the model the checksum describes")
    tampered = register_in_mlflow(mlflow_url, name, tampered_dir)
    registry = MlflowRegistry(mlflow_url, tmp_path / "cache", backoff_s=0.01)
    try:
        with pytest.raises(CorruptModelError, match=r"no model\.onnx"):
            await registry.fetch(name, missing)
        with pytest.raises(CorruptModelError, match="sha256"):
            await registry.fetch(name, tampered)
        assert not (tmp_path / "cache" / name / tampered).exists(), "nothing half-written"
    finally:
        await registry.aclose()


async def test_names_as_mlflow_allows_them_and_documents(
    mlflow_url: str, demo_registry: Path, tmp_path: Path
) -> None:
    name = unique("O'Brien's model (v2) @team")
    v1 = register_in_mlflow(mlflow_url, name, demo_registry / "breast_cancer" / "1", "champion")
    registry = MlflowRegistry(mlflow_url, tmp_path / "cache", backoff_s=0.01)
    try:
        # latest (a filter with the name quoted); a bare name@x would read x as an alias
        assert await registry.resolve(ModelRef.parse(f"models:/{quote(name)}/latest")) == v1
        ref = ModelRef.parse(f"models:/{quote(name)}@champion")
        fetched = await registry.get(ref)
        assert fetched.name == name
        assert fetched.model_file.is_file()
        assert fetched.sources["model_file"] == "default"

        assert await registry.read_document(name, v1, "notes.json") is None
        where = await registry.store_document(name, v1, "notes.json", b'{"a": 1}')
        assert where.startswith("runs:/")
        assert await registry.read_document(name, v1, "notes.json") == b'{"a": 1}'
        await registry.store_document(name, v1, "notes.json", b'{"a": 2}', inline=True)
        assert await registry.read_document(name, v1, "notes.json") == b'{"a": 2}'
        with pytest.raises(RegistryError, match="more than an MLflow tag holds"):
            await registry.store_document(
                name, v1, "big.json", b"{" + b" " * 100_000 + b"}", inline=True
            )
    finally:
        await registry.aclose()


def _shaped_server(wrong: dict[str, object]) -> httpx.MockTransport:
    """A fake MLflow whose answers are well formed except the endpoints in ``wrong`` (path
    suffix -> the JSON it answers instead); aliases are not set, so 'latest' searches."""
    normal: dict[str, object] = {
        "/registered-models/get": {"registered_model": {"aliases": []}},
        "/model-versions/get": {"model_version": {"version": "1", "tags": []}},
        "/model-versions/search": {"model_versions": [{"version": "1"}]},
        "/get-download-uri": {"artifact_uri": "mlflow-artifacts:/1/m"},
        "/mlflow-artifacts/artifacts": {"files": [{"path": "model.onnx", "file_size": 3}]},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if "/mlflow-artifacts/artifacts/" in path:
            return httpx.Response(200, content=b"abc")
        for suffix, doc in {**normal, **wrong}.items():
            if path.endswith(suffix):
                return httpx.Response(200, json=doc)
        return httpx.Response(404, json={"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ""})

    return httpx.MockTransport(answer)


def _listing(*files: object) -> dict[str, object]:
    return {"/mlflow-artifacts/artifacts": {"files": list(files)}}


_ONNX = {"path": "model.onnx", "file_size": 3}


@pytest.mark.parametrize(
    ("call", "wrong", "error"),
    [
        ("fetch", _listing("model.onnx"), "unexpected"),
        ("fetch", _listing({"file_size": 3}), "unexpected"),
        ("fetch", _listing({"path": "model.onnx", "file_size": "abc"}), "unexpected"),
        # every folder lists a folder: the listing never ended
        ("fetch", _listing({"path": "a", "is_dir": True}), "nested deeper than 32 levels"),
        ("fetch", _listing(_ONNX, {"path": "a\u0000b"}), "cannot be stored as a file"),
        ("fetch", _listing(_ONNX, {"path": "a" * 300}), "cannot be stored as a file"),
        ("latest", {"/model-versions/search": {"model_versions": "abc"}}, "unexpected"),
        ("latest", {"/model-versions/search": {"model_versions": [{}]}}, "unexpected"),
        ("champion", {"/registered-models/alias": {"model_version": {"version": None}}},
         "unexpected"),
        ("champion", {"/registered-models/alias": {"model_version": {"version": "../1"}}},
         "unexpected"),
        ("aliases", {"/registered-models/get": {"registered_model": []}}, "unexpected"),
        ("aliases", {"/registered-models/get": {"registered_model": {"aliases": [{}]}}},
         "unexpected"),
        ("document", {"/model-versions/get": {"model_version": {"version": "1", "tags": "x"}}},
         "tags that are not a list of objects"),
    ],
)  # fmt: skip
async def test_answers_of_the_wrong_shape_are_registry_errors(
    tmp_path: Path, call: str, wrong: dict[str, object], error: str
) -> None:
    # each raised TypeError, KeyError, ValueError, OSError or RecursionError before, which the
    # registry's callers (they catch RegistryError) did not expect
    registry = MlflowRegistry(
        "http://mlflow.test", tmp_path, retries=0, transport=_shaped_server(wrong)
    )

    async def act() -> object:
        if call == "fetch":
            return await registry.fetch("m", "1")
        if call == "latest":
            return await registry.resolve(ModelRef.parse("m"))
        if call == "champion":
            return await registry.resolve(ModelRef.parse("m@champion"))
        if call == "aliases":
            return await registry.get_aliases("m")
        return await registry.read_document("m", "1", "notes.json")

    try:
        with pytest.raises(RegistryError, match=error):
            await act()
    finally:
        await registry.aclose()


async def test_listed_sizes_as_mlflow_writes_them(tmp_path: Path) -> None:
    # int64 as a string is MLflow's JSON; a negative or absent size is not checked (the
    # metadata's sha256 is, where it has one)
    for size in ("3", -7, None):
        files = {"files": [{"path": "model.onnx", "file_size": size}]}
        registry = MlflowRegistry(
            "http://mlflow.test", tmp_path / str(size), retries=0,
            transport=_shaped_server({"/mlflow-artifacts/artifacts": files}),
        )  # fmt: skip
        try:
            fetched = await registry.fetch("m", "1")
            assert fetched.model_file.read_bytes() == b"abc"
        finally:
            await registry.aclose()


async def test_an_artifact_longer_than_listed_is_cut_off_where_it_passes_the_size(
    tmp_path: Path,
) -> None:
    # before, the whole answer was written to disk and compared with the listed size after
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        while len(sent) < 1000:  # a GB: the test's bound, not the client's
            sent.append(1)
            yield b"x" * (1 << 20)

    normal = _shaped_server({})

    async def answer(request: httpx.Request) -> httpx.Response:
        if "/mlflow-artifacts/artifacts/" in request.url.path:
            return httpx.Response(200, content=endless())
        return await normal.handle_async_request(request)

    registry = MlflowRegistry(
        "http://mlflow.test", tmp_path, retries=0, transport=httpx.MockTransport(answer)
    )
    try:
        with pytest.raises(CorruptModelError, match="runs past the 3 bytes the registry lists"):
            await registry.fetch("m", "1")
    finally:
        await registry.aclose()
    assert len(sent) <= 2


async def test_downloads_are_retried_as_every_request_is(tmp_path: Path) -> None:
    # a download tries again on a 5xx answer and on a dropped connection, with the same count
    # and the same report as every other request; an answer it cannot use is not tried again
    artifact_answers: list[httpx.Response | None] = []
    tried: list[str] = []
    normal = _shaped_server({})

    async def answer(request: httpx.Request) -> httpx.Response:
        if "/mlflow-artifacts/artifacts/" not in request.url.path:
            return await normal.handle_async_request(request)
        tried.append(request.url.path)
        planned = artifact_answers.pop(0) if artifact_answers else None
        if planned is None:
            raise httpx.ConnectError("connection dropped", request=request)
        return planned

    def registry(cache: str, retries: int) -> MlflowRegistry:
        return MlflowRegistry(
            "http://mlflow.test", tmp_path / cache, retries=retries, backoff_s=0.0,
            transport=httpx.MockTransport(answer),
        )  # fmt: skip

    busy = httpx.Response(503, json={"message": "busy"})
    artifact_answers[:] = [busy, None, httpx.Response(200, content=b"abc")]
    flaky = registry("flaky", retries=2)
    try:
        assert (await flaky.fetch("m", "1")).model_file.read_bytes() == b"abc"
    finally:
        await flaky.aclose()
    assert len(tried) == 3

    tried.clear()
    artifact_answers[:] = [busy, busy, busy]
    down = registry("down", retries=1)
    try:
        with pytest.raises(
            RegistryUnavailableError,
            match=r"unreachable after 2 tries \(downloading 1/m/model\.onnx\): 503 busy",
        ) as info:
            await down.fetch("m", "1")
        assert info.value.retriable
    finally:
        await down.aclose()
    assert len(tried) == 2

    tried.clear()
    artifact_answers[:] = [httpx.Response(403, json={"message": "no"})]
    refused = registry("refused", retries=2)
    try:
        with pytest.raises(RegistryError, match="403 no") as refusal:
            await refused.fetch("m", "1")
        assert not refusal.value.retriable
    finally:
        await refused.aclose()
    assert len(tried) == 1


@pytest.mark.parametrize(("folders", "files_each"), [(0, 1001), (10, 100)])
async def test_a_version_with_more_than_1000_artifacts_is_refused_before_it_is_all_listed(
    tmp_path: Path, folders: int, files_each: int
) -> None:
    # before, every folder was listed and every file fetched, however many (a run's whole
    # artifacts registered as a version); the bound counts files and folders across the tree
    listings: list[str] = []
    normal = _shaped_server({})

    async def answer(request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/mlflow-artifacts/artifacts"):
            return await normal.handle_async_request(request)
        folder = request.url.params["path"]
        listings.append(folder)
        files: list[dict[str, object]] = [
            {"path": f"f{i}.txt", "file_size": 3} for i in range(files_each)
        ]
        if folder == "1/m":
            files += [_ONNX] + [{"path": f"d{i}", "is_dir": True} for i in range(folders)]
        return httpx.Response(200, json={"files": files})

    registry = MlflowRegistry(
        "http://mlflow.test", tmp_path, retries=0, transport=httpx.MockTransport(answer)
    )
    try:
        with pytest.raises(CorruptModelError, match="more than 1000 files and folders"):
            await registry.fetch("m", "1")
        with pytest.raises(CorruptModelError, match="more than 1000 files and folders"):
            await registry.read_document("m", "1", "notes.json")
    finally:
        await registry.aclose()
    assert len(listings) <= 2 * (folders + 1)
    assert not (tmp_path / "m" / "1").exists(), "nothing cached"
