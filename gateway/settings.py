"""Gateway settings: a YAML or TOML file, overridden by ``GATEWAY_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from gateway.admission import AdmissionSettings
from gateway.errors import ConfigError
from gateway.featurelog import FeatureLogSettings, FeedbackSettings
from gateway.serving import BatchingSettings, RuntimeSettings
from gateway.traffic import AdminSettings, ControlSettings, Route, VariantSpec
from monitors.settings import FileSettings, read_settings
from registry_client import ModelRef
from registry_client.errors import InvalidReferenceError
from registry_client.settings import RegistrySettings as BaseRegistrySettings

__all__ = [
    "AdminSettings",
    "AdmissionSettings",
    "BatchingSettings",
    "ControlSettings",
    "FeatureLogSettings",
    "FeedbackSettings",
    "GatewaySettings",
    "ModelSettings",
    "RegistrySettings",
    "RouteSettings",
    "RuntimeSettings",
    "ServerSettings",
    "load_settings",
]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Group):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Limits on a request head (the gateway's protocol; nginx's and Envoy's defaults): URL
    # (414), header block and header count (431), time to receive the whole head (408).
    max_url_bytes: int = Field(default=8 * 1024, ge=256, le=65_000)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=8)
    head_timeout_s: float = Field(default=10.0, gt=0)
    # Time to receive a whole request body, from the end of its head (or its 100 Continue):
    # 408 past it, however the body trickles (the keep-alive only ends a body that stops).
    body_timeout_s: float = Field(default=60.0, gt=0)
    # How long a client may leave its answers unread (the connection's writes paused) before
    # the connection is dropped (nginx's send_timeout); meanwhile nothing more of it is served.
    send_timeout_s: float = Field(default=30.0, gt=0)
    # How long an idle keep-alive connection stays open.
    keep_alive_s: int = Field(default=5, ge=1)
    # "gateway": the gateway's own lean HTTP/1.1 protocol under uvicorn (gateway/http/server.py,
    # about 30 us a request cheaper); "uvicorn": uvicorn's httptools (or h11) protocol.
    http_protocol: Literal["gateway", "uvicorn"] = "gateway"
    # How long shutdown waits for in-flight requests and queued batches.
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    # Processes that parse large JSON bodies (over 256 KiB), started at the first one, so the
    # gateway's own interpreter is not held for their parse; 0 parses them on a worker thread
    # (which holds the GIL, and so the event loop, for the whole parse).
    parse_processes: int = Field(default=1, ge=0, le=64)
    # Reject float inputs that hold NaN or infinity.
    allow_nan: bool = False
    access_log: bool = False
    # Trust X-Forwarded-For/-Proto from a proxy in front of the gateway.
    proxy_headers: bool = False
    # Header whose value routes a caller (sticky variants, sampling by user); logged with records.
    routing_key_header: str = "x-routing-key"
    # Header a caller sets to pin a variant, where the route allows pinning.
    pin_header: str = "x-model-variant"
    # Names this replica in audit entries and canary ownership; default host-pid (with
    # several workers: host-pid of the supervisor, then -w<K> for worker K).
    replica_id: str | None = None
    # Worker processes sharing the port under a supervisor; "auto": one per usable core.
    # 1 runs the gateway in this one process, with no supervisor.
    workers: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = 1
    # /v2/health/ready answers 200 when every endpoint is ready ("all") or at least one ("any");
    # either way it names the endpoints that are not.
    readiness: Literal["all", "any"] = "any"
    # A second port answering /v2/health/live, /v2/health/ready and /metrics from a thread of
    # its own, so a busy event loop cannot delay them (README "Health port"); off when unset.
    health_port: int | None = Field(default=None, ge=1, le=65535)
    # On the health port, liveness fails (503) once the event loop has made no progress for
    # this long: far above any delay load causes, so only a wedged loop fails it.
    health_stall_limit_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _health_port_apart(self) -> ServerSettings:
        if self.health_port is not None and self.health_port == self.port:
            raise ValueError(f"health_port: {self.health_port} is also server.port")
        return self


class RegistrySettings(BaseRegistrySettings):
    # How often served aliases are checked for a move.
    poll_interval_s: float = Field(default=5.0, gt=0)


class RouteSettings(Route):
    """A route in the config file; ``batching`` overrides apply to all its variants."""

    batching: dict[str, Any] = Field(default_factory=dict)

    def route(self) -> Route:
        return Route.model_validate(self.model_dump(exclude={"batching"}))


class ModelSettings(_Group):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    ref: str
    batching: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ref_parses(self) -> ModelSettings:
        try:
            ModelRef.parse(self.ref)
        except InvalidReferenceError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @property
    def model_ref(self) -> ModelRef:
        return ModelRef.parse(self.ref)


class GatewaySettings(FileSettings):
    """Everything the gateway reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    feature_log: FeatureLogSettings = Field(default_factory=FeatureLogSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    # `models` is the short form of a route with one variant named "default".
    models: list[ModelSettings] = Field(default_factory=list)
    routes: list[RouteSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> GatewaySettings:
        names = [m.name for m in self.models] + [r.endpoint for r in self.routes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models/routes: duplicate endpoint names {duplicates}")
        for group in [m.batching for m in self.models] + [r.batching for r in self.routes]:
            unknown = set(group) - set(BatchingSettings.model_fields)
            if unknown:
                raise ValueError(f"unknown batching settings {sorted(unknown)}")
        return self

    def initial_routes(self) -> list[Route]:
        """Every endpoint of the config file as a route."""
        routes = [
            Route(
                endpoint=m.name,
                variants=[VariantSpec(name="default", ref=m.ref, weight=100)],
            )
            for m in self.models
        ]
        return routes + [r.route() for r in self.routes]

    def batching_overrides(self) -> dict[str, dict[str, Any]]:
        """Per-endpoint batching overrides."""
        overrides = {m.name: m.batching for m in self.models}
        overrides.update({r.endpoint: r.batching for r in self.routes})
        return overrides

    def batching_for(self, model: ModelSettings) -> BatchingSettings:
        """The global batching settings with the model's overrides applied."""
        return BatchingSettings.model_validate({**self.batching.model_dump(), **model.batching})


# Paths a config file may give relative to itself: (group or None for the top, key).
_RELATIVE_PATHS = (
    ("registry", "root"),
    ("registry", "cache_dir"),
    ("admin", "audit_log"),
    ("feature_log", "spool_dir"),
    ("feature_log", "ssl_cafile"),
    ("feature_log", "ssl_certfile"),
    ("feature_log", "ssl_keyfile"),
    ("feedback", "spool_dir"),
)


def load_settings(path: Path | None = None, **overrides: Any) -> GatewaySettings:
    """Read the config file (YAML or TOML), apply the environment, validate; name what is wrong
    (ConfigError)."""
    return read_settings(
        GatewaySettings, path, overrides, relative_paths=_RELATIVE_PATHS, error=ConfigError
    )
