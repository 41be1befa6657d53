"""Reference profiles through the registry client: cached, stored, looked up again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from monitors.profile import PROFILE_FILE, build_profile
from monitors.references import ReferenceProfiles, store_profile
from monitors.settings import load_settings
from registry_client import LocalRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_profiles_are_cached_stored_and_looked_up_again(demo_registry: Path) -> None:
    registry = LocalRegistry(demo_registry)
    clock = Clock()
    profiles = ReferenceProfiles(registry, retry_s=10, clock=clock)
    # version 1 has no profile file: its metadata's reference serves
    from_metadata = await profiles.load("breast_cancer", "1")
    assert from_metadata is not None
    assert len(from_metadata.features) == 30
    assert profiles.get("breast_cancer", "1") is from_metadata

    # a version without any profile is not asked for again before retry_s
    version_2 = demo_registry / "breast_cancer" / "2" / "metadata.json"
    kept = version_2.read_bytes()
    version_2.write_text("{}")
    assert await profiles.load("breast_cancer", "2") is None
    version_2.write_bytes(kept)
    built = build_profile({"mean radius": np.linspace(5, 25, 200)})
    where = await store_profile(registry, "breast_cancer", "2", built)
    assert Path(where).name == PROFILE_FILE
    assert await profiles.load("breast_cancer", "2") is None  # still within retry_s
    clock.now = 11
    stored = await profiles.load("breast_cancer", "2")
    assert stored is not None
    typed = built.features["mean radius"].model_copy(update={"dtype": "float"})
    assert stored.features == {"mean radius": typed}, "as built, with the metadata's types"

    # a registry error is logged and treated as "no profile"
    shutil.rmtree(demo_registry / "breast_cancer" / "1")
    assert await profiles.load("breast_cancer", "1") is from_metadata  # cached
    assert await profiles.load("gone", "1") is None
    await profiles.aclose()


def test_the_local_root_is_registry_root_unless_the_registry_names_one(tmp_path: Path) -> None:
    config = tmp_path / "monitor.yaml"
    config.write_text("registry_root: models\n")
    assert load_settings(config).registry.root == tmp_path / "models"
    config.write_text(
        "registry: {backend: mlflow, mlflow_url: 'http://127.0.0.1:5000', cache_dir: cache}\n"
    )
    settings = load_settings(config)
    assert settings.registry.backend == "mlflow"
    assert settings.registry.cache_dir == tmp_path / "cache"


async def test_a_stored_profile_the_windows_cannot_use_is_no_profile(demo_registry: Path) -> None:
    # Each was read before and raised out of the windows at the version's first records
    # (ValueError: 'minlength' must not be negative, operands could not be broadcast, math
    # domain error; TypeError for a count past 64 bits): the monitor stopped, and again on
    # every restart. Now the version has no reference profile: its records are counted skipped.
    registry = LocalRegistry(demo_registry)
    good = build_profile({"mean radius": np.linspace(5, 25, 200)}).model_dump(mode="json")
    numeric = good["features"]["mean radius"]
    broken = {
        "no bin edges": {**numeric, "bin_edges": []},
        "a count short": {**numeric, "counts": numeric["counts"][:-1]},
        "edges out of order": {**numeric, "bin_edges": numeric["bin_edges"][::-1]},
        "a negative count": {**numeric, "counts": [-5] * len(numeric["counts"])},
        "a count past 64 bits": {"kind": "categorical", "categories": {"a": 10**30}},
        "a missing rate of 2": {"kind": "categorical", "categories": {"a": 1}, "missing_rate": 2},
    }
    folder = demo_registry / "breast_cancer" / "2"
    for what, feature in broken.items():
        profiles = ReferenceProfiles(registry, retry_s=10, clock=Clock())
        document = {"features": {"mean radius": feature}}
        (folder / PROFILE_FILE).write_text(json.dumps(document))
        assert await profiles.load("breast_cancer", "2") is None, what
    (folder / PROFILE_FILE).write_text(json.dumps(good))
    assert await ReferenceProfiles(registry).load("breast_cancer", "2") is not None
    await registry.aclose()
