"""One worker process of ``gateway serve --workers N``: the whole gateway, on a listening
socket it shares with the other workers, linked to the supervisor that started it."""

from __future__ import annotations

import logging
import socket

from gateway.featurelog import adopt_spools
from gateway.serve import serve
from gateway.settings import GatewaySettings
from gateway.workers._peers import WorkerPeers

__all__ = ["gather_spools", "run_worker", "worker_settings"]


def worker_settings(settings: GatewaySettings, slot: int, replica_base: str) -> GatewaySettings:
    """Worker ``slot``'s settings: its own replica id (stable across its restarts, so a canary
    it drives stays its own) and its own feature-log and feedback spool directories."""
    server = settings.server.model_copy(
        update={"replica_id": f"{replica_base}-w{slot}", "workers": 1}
    )
    feature_log = settings.feature_log.model_copy(
        update={"spool_dir": settings.feature_log.spool_dir / f"worker-{slot}"}
    )
    feedback = settings.feedback.model_copy(
        update={"spool_dir": settings.feedback.spool_dir / f"worker-{slot}"}
    )
    return settings.model_copy(
        update={"server": server, "feature_log": feature_log, "feedback": feedback}
    )


def gather_spools(settings: GatewaySettings, workers: int) -> None:
    """Before a start with ``workers`` processes: the feature-log and feedback records that a
    run with another count spooled where none of these processes looks are moved to where one
    replays them (a single process spools in ``spool_dir``, worker K in ``worker-K`` under it)."""
    max_bytes = settings.feature_log.spool_max_bytes
    if settings.feature_log.enabled:
        adopt_spools(settings.feature_log.spool_dir, max_bytes, workers)
    if settings.feedback.enabled:
        adopt_spools(settings.feedback.spool_dir, max_bytes, workers)


def run_worker(
    settings: GatewaySettings,
    slot: int,
    log_level: str,
    listener: socket.socket,
    link: socket.socket,
    health: socket.socket | None = None,
) -> None:
    """The worker's main function (a spawned process): serve until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format=f"%(asctime)s %(levelname)s w{slot} %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # as `gateway serve` does
    peers = WorkerPeers(link, slot, settings.control.timeout_s)
    serve(settings, log_level, peers=peers, sockets=[listener], health_socket=health)
