"""End-to-end: the gateway process serves a model from a real MLflow registry and follows its
alias."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from registry_client import ModelMetadata
from registry_client.mlflow import MlflowRegistry
from tests._mlflow_server import register_in_mlflow, set_alias
from tests._support import start_gateway

pytestmark = pytest.mark.e2e


def test_gateway_serves_from_mlflow_and_follows_the_alias(
    mlflow_url: str, demo_registry: Path, tmp_path: Path
) -> None:
    name = f"bc-{uuid.uuid4().hex[:8]}"
    register_in_mlflow(mlflow_url, name, demo_registry / "breast_cancer" / "1", "champion")
    v2 = register_in_mlflow(mlflow_url, name, demo_registry / "breast_cancer" / "2")
    config = {
        "registry": {"backend": "mlflow", "mlflow_url": mlflow_url,
                     "cache_dir": str(tmp_path / "cache"), "poll_interval_s": 0.5},
        "models": [{"name": "bc", "ref": f"{name}@champion"}],
    }  # fmt: skip
    row = load_breast_cancer().data[0].astype(np.float32).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]}
    with start_gateway(tmp_path, config) as gw, httpx.Client(timeout=10) as client:
        first = client.post(f"{gw.url}/v2/models/bc/infer", json=body)
        assert first.status_code == 200, first.text
        assert first.json()["model_version"] == "1"
        set_alias(mlflow_url, name, "champion", v2)
        deadline = time.monotonic() + 30
        version = "1"
        while version != v2 and time.monotonic() < deadline:
            response = client.post(f"{gw.url}/v2/models/bc/infer", json=body)
            assert response.status_code == 200
            version = response.json()["model_version"]
            time.sleep(0.1)
    assert version == v2


def test_gateway_serves_a_version_registered_through_the_client(
    mlflow_url: str, demo_registry: Path, tmp_path: Path
) -> None:
    """What ``MlflowRegistry.register_version`` writes (over REST, no mlflow import) is what the
    gateway fetches, verifies and serves; ``set_alias`` moves what it serves."""
    name = f"bc-{uuid.uuid4().hex[:8]}"

    async def register(folder: Path, alias: str | None) -> str:
        registry = MlflowRegistry(mlflow_url, tmp_path / "writer-cache")
        try:
            metadata = ModelMetadata.load(folder).model_copy(update={"model_sha256": None})
            version = await registry.register_version(name, folder / "model.onnx", metadata)
            if alias is not None:
                await registry.set_alias(name, alias, version)
            return version
        finally:
            await registry.aclose()

    v1 = asyncio.run(register(demo_registry / "breast_cancer" / "1", "champion"))
    config = {
        "registry": {"backend": "mlflow", "mlflow_url": mlflow_url,
                     "cache_dir": str(tmp_path / "cache"), "poll_interval_s": 0.5},
        "models": [{"name": "bc", "ref": f"{name}@champion"}],
    }  # fmt: skip
    row = load_breast_cancer().data[0].astype(np.float32).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]}
    with start_gateway(tmp_path, config) as gw, httpx.Client(timeout=10) as client:
        first = client.post(f"{gw.url}/v2/models/bc/infer", json=body)
        assert first.status_code == 200, first.text
        assert first.json()["model_version"] == v1
        v2 = asyncio.run(register(demo_registry / "breast_cancer" / "2", "champion"))
        deadline = time.monotonic() + 30
        version = v1
        while version != v2 and time.monotonic() < deadline:
            response = client.post(f"{gw.url}/v2/models/bc/infer", json=body)
            assert response.status_code == 200
            version = response.json()["model_version"]
            time.sleep(0.1)
    assert version == v2
