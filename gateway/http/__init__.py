"""The HTTP layer: the only part of the gateway that imports Starlette."""

from gateway.http.app import create_app
from gateway.http.health import HealthServer, Heartbeat, bind_health

__all__ = ["HealthServer", "Heartbeat", "bind_health", "create_app"]
