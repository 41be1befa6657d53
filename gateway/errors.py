"""The gateway's exception tree. Errors carry no HTTP status: the app maps them in one table."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeadlineExceededError",
    "GatewayError",
    "InvalidInputError",
    "ModelExecutionError",
    "ModelLoadError",
    "NotReadyError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "UnknownModelError",
]


class GatewayError(Exception):
    """Base error of the gateway."""

    retriable = False


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the setting."""


class InvalidInputError(GatewayError):
    """The request is malformed or does not match the model's signature."""


class PayloadTooLargeError(GatewayError):
    """The request body exceeds the configured limit."""


class UnknownModelError(GatewayError):
    """No served model (or version) has that name."""


class NotReadyError(GatewayError):
    """The model is known but cannot take requests now (loading, or shutting down)."""

    retriable = True

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OverloadedError(NotReadyError):
    """The model cannot take more work now: its queue is full, or admission control refused."""


class RateLimitedError(NotReadyError):
    """One caller (API key or routing key) sent more than its own share."""


class DeadlineExceededError(NotReadyError):
    """The request waited longer than its deadline before it could run."""


class ModelExecutionError(GatewayError):
    """onnxruntime failed while running the model."""


class ModelLoadError(GatewayError):
    """A model version could not be loaded or warmed up; it never takes traffic."""
