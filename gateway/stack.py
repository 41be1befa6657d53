"""``gateway stack``: the whole stack on one machine with embedded defaults, for ``make serve``.

It registers the demo model in the local registry, starts the embedded Kafka-protocol broker,
starts the drift monitor (when its config file exists), and runs the gateway in the foreground;
Ctrl-C stops all of them. Production runs each part on its own against a real Kafka cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

from gateway.demo import DEMO_MODEL, build_demo_registry
from gateway.serve import serve
from gateway.settings import load_settings
from monitors.broker import EmbeddedBroker, create_topics

__all__ = ["run_stack"]

log = logging.getLogger(__name__)


def run_stack(config: Path, monitor_config: Path | None, broker_port: int) -> int:
    """Run broker, monitor and gateway until interrupted; returns the exit status."""
    settings = load_settings(config)
    registry = build_demo_registry(settings.registry.root)
    log.info("demo model %s: versions %s", DEMO_MODEL, registry.versions(DEMO_MODEL))
    broker = EmbeddedBroker(port=broker_port)
    broker.start()
    monitor: subprocess.Popen[bytes] | None = None
    try:
        topics = [settings.feature_log.topic, settings.control.topic]
        asyncio.run(create_topics(broker.bootstrap_servers, topics, partitions=3))
        log.info("embedded broker on %s (pid %s)", broker.bootstrap_servers, broker.pid)
        if monitor_config is not None and monitor_config.exists():
            monitor = subprocess.Popen(
                [sys.executable, "-m", "monitors", "run", "--config", str(monitor_config)],
                env={**os.environ, "MONITOR_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers},
            )
            log.info("drift monitor started (pid %s)", monitor.pid)
        settings = load_settings(
            config,
            feature_log__bootstrap_servers=broker.bootstrap_servers,
            control__bootstrap_servers=broker.bootstrap_servers,
        )
        serve(settings)
    finally:
        if monitor is not None and monitor.poll() is None:
            monitor.terminate()
            try:
                monitor.wait(10)
            except subprocess.TimeoutExpired:
                monitor.kill()
        broker.stop()
    return 0
