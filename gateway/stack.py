"""``gateway stack``: the whole stack on one machine with embedded defaults, for ``make serve``.

It registers the demo model in the local registry, starts the embedded Kafka-protocol broker,
starts the drift monitor (when its config file exists) and the retraining worker (when its config
file exists; the monitor's webhook then points at it, signed with the worker's secret), and runs
the gateway in the foreground. Ctrl-C (or SIGTERM) stops them in order: the gateway drains and
flushes its feature log to the broker, then the worker and the monitor save their state, then
the broker stops. The broker, the monitor and the worker run in sessions of their own, so a
terminal's Ctrl-C reaches only this process, which stops them in that order, quietly.
Production runs each part on its own against a real Kafka cluster.
"""

from __future__ import annotations

import asyncio
import json
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
from monitors.retrain.settings import load_settings as load_retrain_settings
from monitors.settings import load_settings as load_monitor_settings

__all__ = ["run_stack"]

log = logging.getLogger(__name__)


def run_stack(
    config: Path,
    monitor_config: Path | None,
    broker_port: int,
    port: int | None = None,
    monitor_port: int | None = None,
    *,
    retrain_config: Path | None = None,
    retrain_port: int | None = None,
) -> int:
    """Run broker, monitor, retraining worker and gateway until interrupted; returns the exit
    status."""
    overrides = {} if port is None else {"server__port": port}
    settings = load_settings(config, **overrides)
    run_monitor = monitor_config is not None and monitor_config.exists()
    monitor_url = None
    if run_monitor:
        assert monitor_config is not None
        http = load_monitor_settings(monitor_config).http
        monitor_url = f"http://{http.host}:{monitor_port or http.port}/status"
    run_retrain = run_monitor and retrain_config is not None and retrain_config.exists()
    retrain_url = None
    webhooks = ""
    if run_retrain:
        assert retrain_config is not None
        retrain = load_retrain_settings(retrain_config)
        retrain_url = f"http://{retrain.http.host}:{retrain_port or retrain.http.port}"
        target = {
            "name": "retrain",
            "url": f"{retrain_url}/events",
            "secret": retrain.secret.get_secret_value(),
        }
        webhooks = json.dumps([target])
    # Until uvicorn takes the signals over, Ctrl-C or SIGTERM ends the start quietly.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(port=broker_port)
    monitor: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
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
            if run_retrain:
                env["MONITOR_WEBHOOKS"] = webhooks
            monitor = subprocess.Popen(
                [sys.executable, "-m", "monitors", "run", "--config", str(monitor_config)],
                env=env,
                start_new_session=True,
            )
        if run_retrain:
            assert retrain_config is not None
            worker = _start_worker(
                retrain_config, broker.bootstrap_servers, settings.server.port, retrain_port
            )
        settings = load_settings(
            config,
            **overrides,
            feature_log__bootstrap_servers=broker.bootstrap_servers,
            control__bootstrap_servers=broker.bootstrap_servers,
        )
        log.info(
            "gateway http://%s:%d | drift monitor %s | retraining worker %s | broker %s | "
            "Ctrl-C stops everything",
            settings.server.host,
            settings.server.port,
            monitor_url or "off (no monitor config)",
            f"{retrain_url}/jobs" if retrain_url else "off (no retrain config)",
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
        _stop_child(worker)
        _stop_child(monitor)
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0


def _start_worker(
    config: Path, bootstrap_servers: str, gateway_port: int, port: int | None
) -> subprocess.Popen[bytes]:
    """The retraining worker, reading the embedded broker and rolling out through this
    gateway's admin API."""
    env = {
        **os.environ,
        "RETRAIN_KAFKA__BOOTSTRAP_SERVERS": bootstrap_servers,
        "RETRAIN_CANARY__GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
    }
    if port is not None:
        env["RETRAIN_HTTP__PORT"] = str(port)
    command = [sys.executable, "-m", "monitors", "retrain", "serve", "--config", str(config)]
    return subprocess.Popen(command, env=env, start_new_session=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stop_child(child: subprocess.Popen[bytes] | None) -> None:
    if child is None or child.poll() is not None:
        return
    child.terminate()  # the monitor saves its windows and commits its offsets, then exits
    try:
        child.wait(15)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
