from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from registry_client import (
    CorruptModelError,
    InvalidReferenceError,
    LocalRegistry,
    ModelMetadata,
    ModelNotFoundError,
    ModelRef,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
)


def test_references_parse() -> None:
    assert ModelRef.parse("fraud@champion") == ModelRef("fraud", alias="champion")
    assert ModelRef.parse("fraud/7") == ModelRef("fraud", version="7")
    assert ModelRef.parse("fraud") == ModelRef("fraud", alias="latest")
    assert str(ModelRef.parse("fraud/7")) == "fraud/7"
    for bad in ("", "a/../b", "a@", "a:b", "../x", "models:/m-123", "models:/x/Production"):
        with pytest.raises(InvalidReferenceError):
            ModelRef.parse(bad)


async def test_resolve_aliases_versions_and_latest(demo_registry: Path, demo_model: str) -> None:
    registry = LocalRegistry(demo_registry)
    assert await registry.resolve(ModelRef.parse(f"{demo_model}@champion")) == "1"
    assert await registry.resolve(ModelRef.parse(f"{demo_model}@challenger")) == "2"
    assert await registry.resolve(ModelRef.parse(demo_model)) == "2"  # latest
    registry.set_alias_sync(demo_model, "champion", "2")
    assert await registry.resolve(ModelRef.parse(f"{demo_model}@champion")) == "2"
    version = await registry.get(ModelRef.parse(f"{demo_model}/1"))
    assert version.model_file.is_file()
    assert version.metadata.class_labels == ["malignant", "benign"]
    assert version.metadata.reference is not None
    assert len(version.metadata.reference.features) == 30


async def test_clear_errors(demo_registry: Path, demo_model: str) -> None:
    registry = LocalRegistry(demo_registry)
    with pytest.raises(ModelNotFoundError, match="'nope'"):
        await registry.resolve(ModelRef.parse("nope@champion"))
    with pytest.raises(VersionNotFoundError, match="no alias 'staging'"):
        await registry.resolve(ModelRef.parse(f"{demo_model}@staging"))
    with pytest.raises(VersionNotFoundError, match="no version '9'"):
        await registry.fetch(demo_model, "9")
    with pytest.raises(VersionNotFoundError):
        registry.set_alias_sync(demo_model, "champion", "9")


async def test_missing_or_tampered_model_file_is_corrupt(
    demo_registry: Path, demo_model: str
) -> None:
    registry = LocalRegistry(demo_registry)
    model_file = demo_registry / demo_model / "2" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:-10])
    with pytest.raises(CorruptModelError, match="sha256"):
        await registry.fetch(demo_model, "2")
    model_file.unlink()
    with pytest.raises(CorruptModelError, match="missing"):
        await registry.fetch(demo_model, "2")


async def test_a_metadata_file_that_cannot_be_read_is_corrupt(
    demo_registry: Path, demo_model: str
) -> None:
    # a folder named metadata.json made the OSError escape, which no caller expects
    metadata = demo_registry / demo_model / "2" / "metadata.json"
    metadata.unlink()
    metadata.mkdir()
    with pytest.raises(CorruptModelError, match=r"cannot read metadata\.json in 2: Is a directory"):
        await LocalRegistry(demo_registry).fetch(demo_model, "2")


def test_register_numbers_versions_and_records_the_checksum(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "reg")
    source = tmp_path / "m.onnx"
    source.write_bytes(b"model bytes")
    assert registry.register("m", source, ModelMetadata()) == "1"
    assert registry.register("m", source, ModelMetadata()) == "2"
    assert registry.versions("m") == ["1", "2"]
    stored = ModelMetadata.load(tmp_path / "reg" / "m" / "2")
    assert stored.model_sha256 is not None
    assert len(stored.model_sha256) == 64


async def test_a_corrupt_aliases_file_is_a_registry_error(
    demo_registry: Path, demo_model: str
) -> None:
    registry = LocalRegistry(demo_registry)
    aliases = demo_registry / demo_model / "aliases.json"
    for content in (b'{"champion": "1"', b"\xff\xfe{}", b"[1]"):
        aliases.write_bytes(content)
        with pytest.raises(RegistryError, match=r"aliases\.json"):
            await registry.resolve(ModelRef.parse(f"{demo_model}@champion"))
    aliases.write_bytes(b'{"champion": "../2"}')  # a version that reads as another path
    with pytest.raises(RegistryError):
        await registry.fetch(
            demo_model, await registry.resolve(ModelRef.parse(f"{demo_model}@champion"))
        )


def test_registered_versions_and_aliases_follow_the_umask(tmp_path: Path) -> None:
    # versions were 0700 and aliases.json 0600 whatever the umask (mkdtemp, mkstemp): a
    # gateway running as another user than the writer could read neither
    registry = LocalRegistry(tmp_path / "reg")
    source = tmp_path / "m.onnx"
    source.write_bytes(b"model bytes")
    previous = os.umask(0o022)
    try:
        version = registry.register("m", source, ModelMetadata())
        registry.set_alias_sync("m", "champion", version)
        os.umask(0o077)
        private = registry.register("m", source, ModelMetadata())
    finally:
        os.umask(previous)
    folder = tmp_path / "reg" / "m"
    assert stat.S_IMODE((folder / version).stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / version / "model.onnx").stat().st_mode) == 0o644
    assert stat.S_IMODE((folder / version / "metadata.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((folder / "aliases.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((folder / private).stat().st_mode) == 0o700


async def test_a_version_folder_without_its_metadata_is_not_whole(
    demo_registry: Path, demo_model: str
) -> None:
    # model.onnx copied in first was served with default metadata: no features, no labels
    (demo_registry / demo_model / "2" / "metadata.json").unlink()
    with pytest.raises(CorruptModelError, match=r"metadata\.json is missing"):
        await LocalRegistry(demo_registry).fetch(demo_model, "2")


async def test_a_registry_that_cannot_be_read_is_unavailable_not_corrupt(
    demo_registry: Path, demo_model: str
) -> None:
    registry = LocalRegistry(demo_registry)
    aliases = demo_registry / demo_model / "aliases.json"
    aliases.unlink()
    aliases.mkdir()  # an OSError on reading, as a file without permissions gives (even to root)
    with pytest.raises(RegistryUnavailableError, match=r"aliases\.json: Is a directory") as info:
        await registry.resolve(ModelRef.parse(f"{demo_model}@champion"))
    assert info.value.retriable


async def test_a_version_stamp_changes_with_its_files(demo_registry: Path, demo_model: str) -> None:
    registry = LocalRegistry(demo_registry)
    folder = demo_registry / demo_model / "2"
    stamp = await registry.version_stamp(demo_model, "2")
    assert await registry.version_stamp(demo_model, "2") == stamp
    await registry.fetch(demo_model, "2")  # reading changes nothing
    assert await registry.version_stamp(demo_model, "2") == stamp
    (folder / "model.onnx").chmod(0o600)
    assert await registry.version_stamp(demo_model, "2") != stamp
    stamp = await registry.version_stamp(demo_model, "2")
    with (folder / "metadata.json").open("ab") as metadata:
        metadata.write(b" ")
    assert await registry.version_stamp(demo_model, "2") != stamp
    assert await registry.version_stamp(demo_model, "7") == ()  # no such folder yet
