"""What runs one model version: the onnxruntime session, its batcher, hot-swapped deployments.

It knows neither traffic nor the feature log. Other packages import only these names.
"""

from gateway.serving._wake import wait_woken
from gateway.serving.batcher import Batcher, BatchObserver, Tensors
from gateway.serving.deployments import (
    Deployment,
    LoadedModel,
    ModelLoader,
    ModelManager,
    NotTakenUp,
)
from gateway.serving.runtime import ModelRuntime, RuntimeOptions
from gateway.serving.settings import BatchingSettings, RuntimeSettings
from gateway.serving.signature import (
    DATATYPE_TO_NUMPY,
    Signature,
    TensorSpec,
    datatype_of,
    feature_input,
    per_feature_inputs,
)

__all__ = [
    "DATATYPE_TO_NUMPY",
    "BatchObserver",
    "Batcher",
    "BatchingSettings",
    "Deployment",
    "LoadedModel",
    "ModelLoader",
    "ModelManager",
    "ModelRuntime",
    "NotTakenUp",
    "RuntimeOptions",
    "RuntimeSettings",
    "Signature",
    "TensorSpec",
    "Tensors",
    "datatype_of",
    "feature_input",
    "per_feature_inputs",
    "wait_woken",
]
