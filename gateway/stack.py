"""``gateway stack``: the whole stack on one machine with embedded defaults, for ``make serve``.

It registers the demo model in the local registry, starts the embedded Kafka-protocol broker,
starts the drift monitor (when its config file exists) and the retraining worker (when its config
file exists; the monitor's webhook then points at it, signed with the worker's secret), and runs
the gateway in the foreground. Ctrl-C (or SIGTERM) stops them in order: the gateway drains and
flushes its feature log to the broker, then the worker and the monitor save their state, then
the broker stops. The broker, the monitor and the worker run in sessions of their own, so a
terminal's Ctrl-C reaches only this process, which stops them in that order, quietly. Each gets
SIGTERM from the kernel if this process ends without stopping them (SIGKILL, a crash).

Every port is checked before anything starts (a port in use is a ConfigError naming the option).
A part that ends on its own (the broker, the monitor, the worker) stops the whole stack the same
way, with exit status 1: a gateway left serving without them would look healthy while its feature
log spooled to disk and nothing watched for drift. Production runs each part on its own against
a real Kafka cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from gateway.demo import DEMO_MODEL, build_demo_registry
from gateway.errors import ConfigError
from gateway.http import bind_health
from gateway.http.accept import bind_main
from gateway.serve import serve
from gateway.settings import load_settings
from monitors.broker import EmbeddedBroker, create_topics, ends_with_parent
from monitors.retrain.settings import load_settings as load_retrain_settings
from monitors.settings import load_settings as load_monitor_settings
from monitors.sockets import listening_socket

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
    server = settings.server
    ports: list[tuple[str, str, int]] = [("--broker-port", "127.0.0.1", broker_port)]
    run_monitor = monitor_config is not None and monitor_config.exists()
    monitor_url = None
    if run_monitor:
        assert monitor_config is not None
        http = load_monitor_settings(monitor_config).http
        monitor_url = f"http://{http.host}:{monitor_port or http.port}/status"
        ports.append(("--monitor-port (the monitor's http.port)", http.host,
                      monitor_port or http.port))  # fmt: skip
    run_retrain = run_monitor and retrain_config is not None and retrain_config.exists()
    retrain_url = None
    webhooks = ""
    if run_retrain:
        assert retrain_config is not None
        retrain = load_retrain_settings(retrain_config)
        retrain_url = f"http://{retrain.http.host}:{retrain_port or retrain.http.port}"
        ports.append(("--retrain-port (the worker's http.port)", retrain.http.host,
                      retrain_port or retrain.http.port))  # fmt: skip
        target = {
            "name": "retrain",
            "url": f"{retrain_url}/events",
            "secret": retrain.secret.get_secret_value(),
        }
        webhooks = json.dumps([target])
    # a port in use stops the start before any part runs, naming the option
    bind_main(server.host, server.port, 1).close()
    if server.health_port is not None:
        bind_health(server.host, server.health_port).close()
    for option, host, number in ports:
        _check_port(option, host, number)
    # Until uvicorn takes the signals over, Ctrl-C or SIGTERM ends the start quietly.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(port=broker_port, end_with_parent=True)
    monitor: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    watchdog = _Watchdog()
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
                preexec_fn=ends_with_parent(),
            )
        if run_retrain:
            assert retrain_config is not None
            worker = _start_worker(
                retrain_config, broker.bootstrap_servers, settings.server.port, retrain_port
            )
        watchdog.start(
            [("the embedded broker", broker.pid, broker.poll)]
            + ([("the drift monitor", monitor.pid, monitor.poll)] if monitor else [])
            + ([("the retraining worker", worker.pid, worker.poll)] if worker else [])
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
        if not serving and watchdog.ended is None:
            log.info("interrupted while starting")
    finally:
        # the rest is bounded by timeouts; a second Ctrl-C must not leave children behind
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        watchdog.stop()
        _stop_child(worker)
        _stop_child(monitor)
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if watchdog.ended is not None:
        log.error("stopped: %s", watchdog.ended)
        return 1
    log.info("stopped")
    return 0


def _check_port(option: str, host: str, port: int) -> None:
    try:
        listening_socket(host, port, option).close()
    except OSError as exc:
        raise ConfigError(str(exc)) from exc


class _Watchdog:
    """Watches the stack's child processes from a thread; when one ends on its own, says which
    and how (``ended``) and sends this process SIGTERM, which stops the stack as Ctrl-C does."""

    def __init__(self) -> None:
        self.ended: str | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parts: list[tuple[str, int | None, Callable[[], int | None]]]) -> None:
        # a pidfd is readable once its process has ended, even if it ended before this call
        fds = {os.pidfd_open(pid): (name, pid, poll) for name, pid, poll in parts if pid}
        self._thread = threading.Thread(target=self._watch, args=(fds,), name="stack-watchdog")
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the stack stops its parts itself); safe to call twice."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _watch(self, fds: dict[int, tuple[str, int, Callable[[], int | None]]]) -> None:
        try:
            ready, _, _ = select.select([*fds, self._wake_r], [], [])
            gone = [fd for fd in ready if fd in fds]
            if not gone or self._stopping.is_set():
                return
            name, pid, poll = fds[gone[0]]
            code = poll()
            how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            self.ended = f"{name} (pid {pid}) ended on its own ({how})"
            log.error("%s: stopping the stack", self.ended)
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            for fd in fds:
                os.close(fd)


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
    return subprocess.Popen(
        command,
        env=env,
        start_new_session=True,
        preexec_fn=ends_with_parent(),
    )


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
