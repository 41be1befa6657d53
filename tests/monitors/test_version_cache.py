"""The registry lookup cache: versions that cannot be read are remembered only up to a bound."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from monitors.model_info import ModelInfos
from monitors.version_cache import MAX_UNREADABLE
from registry_client import LocalRegistry, ModelVersion


class CountingRegistry(LocalRegistry):
    """A local registry that counts what is fetched of each version."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fetched: dict[tuple[str, str], int] = {}

    async def fetch(self, name: str, version: str) -> ModelVersion:
        self.fetched[name, version] = self.fetched.get((name, version), 0) + 1
        return await super().fetch(name, version)


async def test_unknown_versions_are_remembered_up_to_the_bound(
    demo_registry: Path, demo_model: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, every unknown (model, version) named in a log record kept a retry-time entry
    # until the process ended: made-up versions grew the monitor's memory without bound.
    caplog.set_level(logging.CRITICAL)  # one "no metadata" line per unknown version
    registry = CountingRegistry(demo_registry)
    infos = ModelInfos(registry, retry_s=3600)
    made_up = [f"made-up-{i}" for i in range(3 * MAX_UNREADABLE)]
    for version in made_up:
        assert await infos.load(demo_model, version) is None
    registry.fetched.clear()

    # the newest MAX_UNREADABLE are still remembered: not asked for again before retry_s
    for version in made_up[-MAX_UNREADABLE:]:
        assert await infos.load(demo_model, version) is None
    assert registry.fetched == {}
    # an older one was forgotten, so it is asked for again (and remembered again)
    assert await infos.load(demo_model, made_up[0]) is None
    assert await infos.load(demo_model, made_up[0]) is None
    assert registry.fetched == {(demo_model, made_up[0]): 1}

    # the cache still serves what it is for: a known version resolves, and is read once
    known = await infos.load(demo_model, "1")
    assert known is not None
    assert await infos.load(demo_model, "1") is known
    assert infos.get(demo_model, "1") is known
    assert registry.fetched[demo_model, "1"] == 1
    await infos.aclose()
