"""Run the gateway under uvicorn: the one place that starts the HTTP server."""

from __future__ import annotations

import asyncio
import socket
import sys
from importlib.util import find_spec

from gateway.assembly import Peers
from gateway.errors import ConfigError
from gateway.featurelog import make_spool_dir
from gateway.settings import GatewaySettings
from monitors.kafka_security import KafkaSecurityError

__all__ = ["check_before_start", "serve"]


def check_before_start(settings: GatewaySettings) -> None:
    """What can fail at start besides the ports, before anything starts: the feature log's and
    the feedback log's spool folders are made, the Kafka TLS files read (ConfigError naming the
    setting)."""
    if settings.feature_log.enabled:
        make_spool_dir("feature_log.spool_dir", settings.feature_log.spool_dir)
    if settings.feedback.enabled:
        make_spool_dir("feedback.spool_dir", settings.feedback.spool_dir)
    if settings.feature_log.enabled or settings.feedback.enabled or settings.control.enabled:
        try:  # the three clients connect with the feature log's security settings
            settings.feature_log.security_options()
        except KafkaSecurityError as exc:
            raise ConfigError(str(exc)) from exc


def serve(
    settings: GatewaySettings,
    log_level: str = "info",
    *,
    peers: Peers | None = None,
    sockets: list[socket.socket] | None = None,
    health_socket: socket.socket | None = None,
) -> None:
    """Run the gateway with uvicorn until SIGINT/SIGTERM, then shut down gracefully.

    A worker of ``gateway serve --workers N`` passes its ``peers`` and the listening sockets it
    shares with the others (the main port's, and the health port's when that is on); otherwise
    ``server.host:server.port`` is bound here, and so is the health port (ConfigError naming
    ``server.port`` or ``server.health_port`` when one cannot be), and the spool folders are
    made and the TLS files read (``check_before_start``).
    """
    check_before_start(settings)
    import uvicorn
    from prometheus_client import CollectorRegistry

    from gateway.http import HealthServer, Heartbeat, bind_health, create_app

    # A batch finishing on a worker thread needs the GIL back from a busy event loop; Python
    # hands it over only every switch interval (5 ms by default), which would add up to 5 ms
    # to every batch under load.
    sys.setswitchinterval(settings.runtime.gil_switch_interval_s)
    registry = CollectorRegistry()
    heartbeat: Heartbeat | None = None
    health: HealthServer | None = None
    if settings.server.health_port is not None:
        if health_socket is None:
            health_socket = bind_health(settings.server.host, settings.server.health_port)
        heartbeat = Heartbeat(settings.server.health_stall_limit_s)
        # With workers, this worker's registry is a part of the server's metrics; the main
        # port's /metrics sums them, over the workers' event loops.
        health = HealthServer(
            health_socket,
            heartbeat,
            registry if peers is None else None,
            metrics_elsewhere="with --workers N, /metrics on server.port sums every worker's",
        )
    app = create_app(settings, metrics_registry=registry, peers=peers, heartbeat=heartbeat)
    http: str | type[asyncio.Protocol] = "httptools" if find_spec("httptools") else "h11"
    if settings.server.http_protocol == "gateway" and find_spec("httptools"):
        from gateway.http.server import HttpLimits, protocol_class

        server = settings.server
        limits = HttpLimits(
            max_body_bytes=server.max_body_bytes,
            max_url_bytes=server.max_url_bytes,
            max_header_bytes=server.max_header_bytes,
            max_headers=server.max_headers,
            head_timeout_s=server.head_timeout_s,
            body_timeout_s=server.body_timeout_s,
            send_timeout_s=server.send_timeout_s,
        )
        http = protocol_class(limits, app)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        # uvloop and httptools are faster; fall back to the pure-Python ones where absent.
        loop="uvloop" if find_spec("uvloop") else "asyncio",
        http=http,
        lifespan="on",
        access_log=settings.server.access_log,
        log_level=log_level,
        timeout_keep_alive=settings.server.keep_alive_s,
        timeout_graceful_shutdown=int(max(1, settings.server.shutdown_timeout_s)),
        server_header=False,
        # X-Forwarded-* rewriting costs a middleware call per request; on only when asked.
        proxy_headers=settings.server.proxy_headers,
    )
    from gateway.http.accept import AcceptingServer, bind_main

    if sockets is None:
        sockets = [bind_main(settings.server.host, settings.server.port, config.backlog)]
    if health is not None:
        health.start()
    try:
        # accepting every waiting connection a pass, not uvloop's one (gateway/http/accept.py)
        AcceptingServer(config).run(sockets=sockets)
    finally:
        if health is not None:
            health.stop()
