"""Which version serves a request, and how operators change that: routes, weighted and sticky
splits, canaries, shadows, the route store with its audit log, the control topic, the CLI.

It uses serving (deployments) and the feature log (shadow records); other packages import
only these names.
"""

from gateway.traffic.canary import VariantStats
from gateway.traffic.cli import add_routes_commands, run_routes_command
from gateway.traffic.control import ControlChannel, ControlSigner, RouteChannel
from gateway.traffic.route_store import (
    AuditLog,
    AuditLogError,
    ControlUnavailableError,
    RevisionMismatchError,
    RouteConflictError,
    RouteStore,
)
from gateway.traffic.router import Traffic
from gateway.traffic.routes import (
    CanaryRule,
    QualityGate,
    Route,
    ShadowSpec,
    VariantSpec,
    follow,
)
from gateway.traffic.settings import AdminSettings, ControlSettings
from gateway.traffic.shadow import ShadowDispatcher

__all__ = [
    "AdminSettings",
    "AuditLog",
    "AuditLogError",
    "CanaryRule",
    "ControlChannel",
    "ControlSettings",
    "ControlSigner",
    "ControlUnavailableError",
    "QualityGate",
    "RevisionMismatchError",
    "Route",
    "RouteChannel",
    "RouteConflictError",
    "RouteStore",
    "ShadowDispatcher",
    "ShadowSpec",
    "Traffic",
    "VariantSpec",
    "VariantStats",
    "add_routes_commands",
    "follow",
    "run_routes_command",
]
