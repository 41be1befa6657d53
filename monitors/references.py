"""Reference profiles through the registry client, for either backend (local folder, MLflow).

A version's profile is, in order: the document ``reference_profile.json`` stored with it
(``python -m monitors profile build``: a file in a local version folder; in MLflow a version
tag holding the profile, or pointing at an artifact of the version's run, else a file beside
the model), else the ``reference`` of its metadata (``metadata.json``, or ``MLmodel``'s
``metadata:``). Profiles are cached per version; a version is looked up when its first records
arrive (so a new version is picked up as soon as it serves), and a version that had none is
looked up again after ``retry_s`` (so a profile built after it went live is picked up too).
"""

from __future__ import annotations

import logging

from monitors.profile import PROFILE_FILE, ModelProfile, profile_from_metadata, with_types
from monitors.version_cache import VersionCache
from registry_client import Registry, RegistryError

__all__ = ["ReferenceProfiles", "store_profile"]

log = logging.getLogger(__name__)


class ReferenceProfiles(VersionCache[ModelProfile]):
    """The profiles of the model versions the monitor sees, cached."""

    missing = "no reference profile"

    def _loaded(self, model: str, version: str, value: ModelProfile) -> None:
        log.info("reference profile of %s/%s: %d columns", model, version, len(value.features))

    async def _read(self, model: str, version: str) -> ModelProfile | None:
        document = await self.registry.read_document(model, version, PROFILE_FILE)
        if document is None:
            metadata = (await self.registry.fetch(model, version)).metadata
            profile = profile_from_metadata(metadata)
            return None if profile is None else with_types(profile, metadata)
        profile = ModelProfile.model_validate_json(document)
        try:
            metadata = (await self.registry.fetch(model, version)).metadata
        except RegistryError as exc:  # the profile holds the types it was built with
            log.warning("%s/%s: profile read without the model's metadata: %s", model, version, exc)
            return profile
        # the metadata's types: how categories are labelled, which features are categorical
        return with_types(profile, metadata)


async def store_profile(
    registry: Registry, model: str, version: str, profile: ModelProfile, *, inline: bool = False
) -> str:
    """Store a profile with a model version, where ``ReferenceProfiles`` finds it; return where.

    In MLflow: an artifact of the version's run (``inline``: the version's tag itself).
    """
    data = (profile.model_dump_json() if inline else profile.model_dump_json(indent=1)).encode()
    return await registry.store_document(model, version, PROFILE_FILE, data, inline=inline)
