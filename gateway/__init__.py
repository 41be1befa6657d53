"""Async model-serving gateway: ONNX models over the Open Inference Protocol v2."""

__version__ = "0.1.0"

__all__ = ["__version__"]
