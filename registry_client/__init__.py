"""Resolve model references to local model files: a local folder registry or MLflow."""

from registry_client.base import ModelVersion, Registry
from registry_client.errors import (
    CorruptModelError,
    InvalidReferenceError,
    ModelNotFoundError,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
)
from registry_client.local import LocalRegistry
from registry_client.metadata import FeatureSpec, ModelMetadata, ReferenceProfile
from registry_client.reference import ModelRef
from registry_client.validation import Calibration, ValidationReport

__all__ = [
    "Calibration",
    "CorruptModelError",
    "FeatureSpec",
    "InvalidReferenceError",
    "LocalRegistry",
    "ModelMetadata",
    "ModelNotFoundError",
    "ModelRef",
    "ModelVersion",
    "ReferenceProfile",
    "Registry",
    "RegistryError",
    "RegistryUnavailableError",
    "ValidationReport",
    "VersionNotFoundError",
]
