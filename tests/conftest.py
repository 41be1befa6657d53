"""Fixtures shared by the whole suite. Real components are started here, never skipped."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.demo import DEMO_MODEL, build_demo_registry
from monitors.broker import EmbeddedBroker
from tests._mlflow_server import mlflow_server


@pytest.fixture(scope="session")
def demo_registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo registry, trained once per session (copy it before changing it)."""
    root = tmp_path_factory.mktemp("demo-registry")
    build_demo_registry(root)
    return root


@pytest.fixture
def demo_registry(demo_registry_template: Path, tmp_path: Path) -> Path:
    """A private copy of the demo registry that a test may change (move aliases, add versions)."""
    root = tmp_path / "registry"
    shutil.copytree(demo_registry_template, root)
    return root


@pytest.fixture
def demo_model() -> str:
    return DEMO_MODEL


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """A fresh embedded Kafka-protocol broker (Tansu) on a free loopback port."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server with a model registry (started once per session)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url
