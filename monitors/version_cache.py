"""A per-(model, version) cache of what is read of a version through the registry client.

A version is read when it is first asked for and cached from then on; a version that could not
be read (nothing there yet, a registry error) is not asked for again before ``retry_s`` has
passed, so a version registered, or a document stored, after it went live is picked up too.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from pydantic import ValidationError

from registry_client import Registry, RegistryError

__all__ = ["VersionCache"]

T = TypeVar("T")


class VersionCache(ABC, Generic[T]):
    """What ``_read`` returns for each version, loaded from the registry (async) and read from
    the cache (sync). A subclass says how to read a version and what its log lines call a miss;
    they are logged under the subclass's module."""

    #: the start of the line logged when a version cannot be read, e.g. "no reference profile"
    missing: str

    def __init__(
        self,
        registry: Registry,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._retry_s = retry_s
        self._clock = clock
        self._found: dict[tuple[str, str], T] = {}
        self._look_again: dict[tuple[str, str], float] = {}
        self.latest: dict[str, T] = {}  # model -> the entry of its version loaded last
        self._log = logging.getLogger(type(self).__module__)

    def get(self, model: str, version: str) -> T | None:
        """What is cached of a version (``load`` it first)."""
        return self._found.get((model, version))

    async def load_all(self, versions: Iterable[tuple[str, str]]) -> None:
        """Load these (model, version) pairs that are not cached yet."""
        for model, version in versions:
            await self.load(model, version)

    async def load(self, model: str, version: str) -> T | None:
        """The version's entry, from the cache or the registry; None when it cannot be read."""
        key = (model, version)
        if key in self._found:
            return self._found[key]
        if self._clock() < self._look_again.get(key, float("-inf")):
            return None
        try:
            value = await self._read(model, version)
        except (RegistryError, ValidationError, ValueError, OSError) as exc:
            self._log.error("%s for %s/%s: %s", self.missing, model, version, exc)
            value = None
        if value is None:
            self._look_again[key] = self._clock() + self._retry_s
            return None
        self._look_again.pop(key, None)
        self._found[key] = self.latest[model] = value
        self._loaded(model, version, value)
        return value

    async def aclose(self) -> None:
        await self.registry.aclose()

    @abstractmethod
    async def _read(self, model: str, version: str) -> T | None:
        """The version's entry from the registry; None when it has none (looked up again)."""

    def _loaded(self, model: str, version: str, value: T) -> None:
        """Called once for each version read and cached."""
