"""The MLflow backend against a real ``mlflow server``."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from registry_client import (
    CorruptModelError,
    ModelNotFoundError,
    ModelRef,
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
    finally:
        await registry.aclose()


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
