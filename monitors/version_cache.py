"""A per-(model, version) cache of what is read of a version through the registry client.

A version is read when it is first asked for and cached from then on; a version that could not
be read (nothing there yet, a registry error) is not asked for again before ``retry_s`` has
passed, so a version registered, or a document stored, after it went live is picked up too.
At most ``MAX_UNREADABLE`` such versions are remembered (the names come from log records, so
made-up ones must not grow memory without bound); past that the oldest is forgotten and is
asked for again when its next records arrive.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from pydantic import ValidationError

from registry_client import Registry, RegistryError

__all__ = ["MAX_UNREADABLE", "VersionCache"]

# versions that could not be read and are not asked for again before their retry time
MAX_UNREADABLE = 4096

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
        # oldest first: the one forgotten when a new one would pass MAX_UNREADABLE
        self._look_again: OrderedDict[tuple[str, str], float] = OrderedDict()
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
            self._look_again.pop(key, None)  # a fresh retry time goes to the back of the line
            self._look_again[key] = self._clock() + self._retry_s
            while len(self._look_again) > MAX_UNREADABLE:
                self._look_again.popitem(last=False)
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
