"""MLflow's MLmodel file read from a version folder (as mlflow.onnx.log_model writes it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry_client import CorruptModelError, LocalRegistry, ModelMetadata, RegistryError

NAMES = [f"f{i}" for i in range(29)] + ["od280/od315"]


def mlmodel(
    flavors: dict[str, Any] | None = None,
    inputs: list[dict[str, Any]] | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    doc: dict[str, Any] = {
        "flavors": flavors
        or {
            "onnx": {"data": "clf.onnx", "onnx_version": "1.17.0", "code": None},
            "python_function": {"data": "clf.onnx", "loader_module": "mlflow.onnx"},
        },
        "mlflow_version": "3.17.2",
        "model_id": "m-0123",
    }
    if inputs is not None:
        doc["signature"] = {
            "inputs": json.dumps(inputs),
            "outputs": '[{"type": "long", "required": true}]',
            "params": None,
        }
    if metadata is not None:
        doc["metadata"] = metadata
    return yaml.safe_dump(doc)


def columns(kind: str = "double") -> list[dict[str, Any]]:
    return [{"type": kind, "name": name, "required": True} for name in NAMES]


def version_folder(demo_registry: Path, text: str, model_file: str = "clf.onnx") -> Path:
    """Model ``wine`` version 1 in the registry, holding ``MLmodel`` and the demo ONNX file."""
    folder = demo_registry / "wine" / "1"
    folder.mkdir(parents=True)
    (folder / "MLmodel").write_text(text)
    shutil.copyfile(demo_registry / "breast_cancer" / "1" / "model.onnx", folder / model_file)
    return folder


async def test_the_file_features_and_metadata_come_from_mlmodel(demo_registry: Path) -> None:
    metadata = {"class_labels": ["malignant", "benign"], "description": "d", "owner": "team-a"}
    version_folder(demo_registry, mlmodel(inputs=columns(), metadata=metadata))
    version = await LocalRegistry(demo_registry).fetch("wine", "1")
    assert version.model_file.name == "clf.onnx"
    assert version.metadata.feature_names == NAMES
    assert {f.dtype for f in version.metadata.features} == {"float"}
    assert version.metadata.class_labels == ["malignant", "benign"]
    assert version.metadata.description == "d"
    assert version.sources == {
        "model_file": "MLmodel flavors.onnx.data",
        "features": "MLmodel signature.inputs",
        "class_labels": "MLmodel metadata",
        "description": "MLmodel metadata",
    }


async def test_metadata_json_wins_field_by_field(demo_registry: Path) -> None:
    folder = version_folder(
        demo_registry, mlmodel(inputs=columns(), metadata={"class_labels": ["a", "b"]})
    )
    ModelMetadata(class_labels=["no", "yes"]).dump(folder)
    version = await LocalRegistry(demo_registry).fetch("wine", "1")
    assert version.metadata.class_labels == ["no", "yes"]
    assert version.metadata.feature_names == NAMES
    assert version.sources["class_labels"] == "metadata.json"
    assert version.sources["features"] == "MLmodel signature.inputs"


async def test_string_columns_are_categorical_and_tensor_signatures_are_named(
    demo_registry: Path,
) -> None:
    inputs = [{"type": "string", "name": "city"}, {"type": "long", "name": "age"}]
    version_folder(demo_registry, mlmodel(inputs=inputs))
    version = await LocalRegistry(demo_registry).fetch("wine", "1")
    city, age = version.metadata.features
    assert (city.dtype, city.categorical, age.dtype, age.categorical) == (
        "string", True, "int", False,
    )  # fmt: skip

    shutil.rmtree(demo_registry / "wine")
    tensor = [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 30]}}]
    version_folder(demo_registry, mlmodel(inputs=tensor))
    version = await LocalRegistry(demo_registry).fetch("wine", "1")
    assert version.metadata.features == []
    assert "tensor-based" in version.sources["features"]


async def test_other_flavours_are_named(demo_registry: Path) -> None:
    flavors = {
        "sklearn": {"pickled_model": "model.pkl", "sklearn_version": "1.5.0"},
        "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.pkl"},
    }
    version_folder(demo_registry, mlmodel(flavors=flavors), model_file="model.pkl")
    with pytest.raises(RegistryError) as info:
        await LocalRegistry(demo_registry).fetch("wine", "1")
    assert str(info.value) == (
        "model wine version 1: flavours [python_function, sklearn]; the gateway serves the onnx "
        "flavour: convert with skl2onnx and log with mlflow.onnx.log_model"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (mlmodel(metadata={"class_labels": 5}), "invalid MLmodel metadata"),
        (mlmodel(flavors={"onnx": {"data": "../x.onnx"}}), "is not a path"),
        ("flavors: [1", "not valid YAML"),
    ],
)
async def test_broken_mlmodel_files_are_corrupt(
    demo_registry: Path, text: str, message: str
) -> None:
    version_folder(demo_registry, text)
    with pytest.raises(CorruptModelError, match=message):
        await LocalRegistry(demo_registry).fetch("wine", "1")


async def test_documents_are_stored_and_read_with_a_version(demo_registry: Path) -> None:
    registry = LocalRegistry(demo_registry)
    assert await registry.read_document("breast_cancer", "1", "notes.json") is None
    where = await registry.store_document("breast_cancer", "1", "notes.json", b"{}")
    assert Path(where) == demo_registry / "breast_cancer" / "1" / "notes.json"
    assert await registry.read_document("breast_cancer", "1", "notes.json") == b"{}"
    with pytest.raises(RegistryError, match="plain file name"):
        await registry.read_document("breast_cancer", "1", "../aliases.json")
