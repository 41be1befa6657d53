"""The HTTP layer: the only part of the gateway that imports Starlette."""

from gateway.http.app import create_app

__all__ = ["create_app"]
