"""Helpers the tests share: free ports, waiting for servers, a gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

__all__ = [
    "GatewayProcess",
    "children_of",
    "demo_gateway",
    "feature_log_gateway_config",
    "free_port",
    "kill_and_wait_ended",
    "running_process",
    "start_gateway",
    "start_monitor",
    "stop_process",
    "wait_for",
    "wait_http",
]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for(condition: Callable[[], object], timeout_s: float = 60.0) -> None:
    """Wait on the event loop until ``condition()`` holds; the generous bound only turns a hang
    into a failure."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers 200; fail loudly (never skip) when it does not."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            response = httpx.get(url, timeout=1.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s: {last}")


class GatewayProcess:
    """A real ``gateway serve`` process on a free port."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM (graceful shutdown), then SIGKILL if it does not end in time."""
        return stop_process(self.proc, timeout_s)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    """SIGTERM (graceful shutdown), then SIGKILL if it does not end in time; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def running_process(
    command: list[str],
    log_path: Path,
    ready_url: str | None = None,
    ready_timeout_s: float = 30.0,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A process (output appended to ``log_path``) until the block ends, then stopped; first
    waits until ``ready_url`` answers 200, when given."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        if ready_url is not None:
            wait_http(ready_url, ready_timeout_s, proc)
        yield proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def start_gateway(
    tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """Run ``python -m gateway serve`` with ``config`` until the block ends."""
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "host": "127.0.0.1", "port": port}}
    config_path = tmp_path / f"gateway-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / f"gateway-{port}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    gateway = GatewayProcess(proc, port, log_path)
    try:
        try:
            wait_http(f"{gateway.url}/v2/health/live", 30.0, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log ends:\n{gateway.log()[-3000:]}") from exc
        yield gateway
    finally:
        gateway.stop()


@contextlib.contextmanager
def demo_gateway(
    tmp_path: Path, registry: Path, admin_token: str, server: dict[str, Any] | None = None
) -> Iterator[GatewayProcess]:
    """A gateway serving the demo model, admin API on; its log must end with no traceback."""
    config = {
        "server": server or {},
        "registry": {"backend": "local", "root": str(registry), "poll_interval_s": 60},
        "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
        "admin": {"tokens": {"ops": admin_token}, "audit_log": str(tmp_path / "audit.jsonl")},
    }
    with start_gateway(tmp_path, config) as gw:
        yield gw
        # whatever the clients sent, nothing reached the log as an unhandled error
        assert "Traceback" not in gw.log(), gw.log()[-5000:]


@contextlib.contextmanager
def start_monitor(
    tmp_path: Path, config: dict[str, Any]
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run ``python -m monitors run`` with ``config`` (its ``http.port`` set) until the block
    ends; yields the process and its base URL. Its output is appended to ``monitor.log``."""
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{config['http']['port']}"
    command = [sys.executable, "-m", "monitors", "run", "--config", str(path)]
    with running_process(command, tmp_path / "monitor.log", f"{url}/health") as proc:
        yield proc, url


def feature_log_gateway_config(
    registry: Path, bootstrap_servers: str, spool_dir: Path, **feature_log: Any
) -> dict[str, Any]:
    """A gateway serving the demo model with its feature log on the given broker."""
    return {
        "registry": {"backend": "local", "root": str(registry)},
        "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
        "feature_log": {
            "enabled": True,
            "bootstrap_servers": bootstrap_servers,
            "spool_dir": str(spool_dir),
            "linger_s": 0.01,
            **feature_log,
        },
    }


def children_of(pid: int, cmdline_has: bytes | None = None) -> list[int]:
    """PIDs of a process's children (Linux ``/proc``); with ``cmdline_has``, only those whose
    command line holds it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes() if cmdline_has is not None else b""
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
            continue
        if cmdline_has is None or cmdline_has in cmdline:
            found.append(int(entry.name))
    return found


def kill_and_wait_ended(
    proc: subprocess.Popen[bytes],
    parts: Mapping[str, int],
    timeout_s: float = 60.0,
    context: Callable[[], str] = lambda: "",
) -> None:
    """SIGKILL ``proc`` (no chance to stop what it started), then wait until every process of
    ``parts`` (name -> PID) has ended; the assertion names those still running, with
    ``context()``. Whatever is left at the end is killed."""
    handles = {name: os.pidfd_open(pid) for name, pid in parts.items()}
    try:
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + timeout_s
        pending = list(handles.values())
        while pending:  # a pidfd turns readable when its process ends
            left = deadline - time.monotonic()
            still = [name for name, fd in handles.items() if fd in pending]
            assert left > 0, f"still running after {proc.pid} was killed: {still} {context()}"
            ended, _, _ = select.select(pending, [], [], left)
            pending = [fd for fd in pending if fd not in ended]
    finally:
        for fd in handles.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)
