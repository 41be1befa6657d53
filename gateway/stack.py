"""``gateway stack``: the whole stack on one machine with embedded defaults, for ``make serve``.

It registers the demo model in the local registry, starts the embedded Kafka-protocol broker,
starts the drift monitor (when its config file exists), and runs the gateway in the foreground.
Ctrl-C (or SIGTERM) stops them in order: the gateway drains and flushes its feature log to the
broker, then the monitor saves its state, then the broker stops. The broker and the monitor run
in sessions of their own, so a terminal's Ctrl-C reaches only this process, which stops them in
that order, quietly. Production runs each part on its own against a real Kafka cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from gateway.demo import DEMO_MODEL, build_demo_registry
from gateway.serve import serve
from gateway.settings import load_settings
from monitors.broker import EmbeddedBroker, create_topics
from monitors.settings import load_settings as load_monitor_settings

__all__ = ["run_stack"]

log = logging.getLogger(__name__)


def run_stack(
    config: Path,
    monitor_config: Path | None,
    broker_port: int,
    port: int | None = None,
    monitor_port: int | None = None,
) -> int:
    """Run broker, monitor and gateway until interrupted; returns the exit status."""
    overrides = {} if port is None else {"server__port": port}
    settings = load_settings(config, **overrides)
    run_monitor = monitor_config is not None and monitor_config.exists()
    monitor_url = None
    if run_monitor:
        assert monitor_config is not None
        http = load_monitor_settings(monitor_config).http
        monitor_url = f"http://{http.host}:{monitor_port or http.port}/status"
    # Until uvicorn takes the signals over, Ctrl-C or SIGTERM ends the start quietly.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(port=broker_port)
    monitor: subprocess.Popen[bytes] | None = None
    serving = False
    try:
        registry = build_demo_registry(settings.registry.root)
        log.info("demo model %s: versions %s", DEMO_MODEL, registry.versions(DEMO_MODEL))
        broker.start()
        topics = [settings.feature_log.topic, settings.control.topic]
        if settings.feedback.enabled:
            topics.append(settings.feedback.topic)
        asyncio.run(create_topics(broker.bootstrap_servers, topics, partitions=3))
        if run_monitor:
            env = {**os.environ, "MONITOR_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers}
            if monitor_port is not None:
                env["MONITOR_HTTP__PORT"] = str(monitor_port)
            monitor = subprocess.Popen(
                [sys.executable, "-m", "monitors", "run", "--config", str(monitor_config)],
                env=env,
                start_new_session=True,
            )
        settings = load_settings(
            config,
            **overrides,
            feature_log__bootstrap_servers=broker.bootstrap_servers,
            control__bootstrap_servers=broker.bootstrap_servers,
        )
        log.info(
            "gateway http://%s:%d | drift monitor %s | broker %s | Ctrl-C stops everything",
            settings.server.host,
            settings.server.port,
            monitor_url or "off (no monitor config)",
            broker.bootstrap_servers,
        )
        serving = True
        serve(settings)
    except KeyboardInterrupt:
        # while starting; or uvicorn, done, passing on the signal that stopped it
        if not serving:
            log.info("interrupted while starting")
    finally:
        # the rest is bounded by timeouts; a second Ctrl-C must not leave children behind
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        _stop_monitor(monitor)
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stop_monitor(monitor: subprocess.Popen[bytes] | None) -> None:
    if monitor is None or monitor.poll() is not None:
        return
    monitor.terminate()  # it saves its windows and commits its offsets, then exits
    try:
        monitor.wait(15)
    except subprocess.TimeoutExpired:
        monitor.kill()
        monitor.wait()
