"""``gateway stack`` (what ``make serve`` runs) as real processes: a port in use stops it before
any part starts, and a part that ends on its own stops the whole stack, leaving nothing behind.

Its parts run in sessions of their own, so they are found by what only this test's processes
have on their command line (this test's folder, the broker's port), and only those are killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests._support import free_port, kill_and_wait_ended, stop_process, wait_http

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PARTS = {"broker": b"tansu", "monitor": b"monitors run", "retrain": b"retrain serve"}


def stack_folder(tmp_path: Path, registry: Path) -> Path:
    """The example configs in ``tmp_path/examples``: their ``../var`` is ``tmp_path/var``."""
    (tmp_path / "examples").mkdir()
    for name in ("gateway.yaml", "monitor.yaml", "retrain.yaml"):
        shutil.copy(EXAMPLES / name, tmp_path / "examples" / name)
    shutil.copytree(registry, tmp_path / "var" / "registry")  # trained once per session
    return tmp_path / "examples"


def stack_command(folder: Path, ports: dict[str, int]) -> list[str]:
    return [
        *(sys.executable, "-m", "gateway", "stack", "--config", str(folder / "gateway.yaml")),
        *("--monitor-config", str(folder / "monitor.yaml")),
        *("--retrain-config", str(folder / "retrain.yaml")),
        *("--port", str(ports["gateway"]), "--monitor-port", str(ports["monitor"])),
        *("--retrain-port", str(ports["retrain"]), "--broker-port", str(ports["broker"])),
    ]


def parts_of(tmp_path: Path, broker_port: int) -> dict[str, int]:
    """The running parts this test's stack started: name -> pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ours = str(tmp_path).encode() in cmdline or f"127.0.0.1:{broker_port} ".encode() in cmdline
        for name, mark in PARTS.items():
            if ours and mark in cmdline:
                found[name] = int(entry.name)
    return found


@contextmanager
def stack(tmp_path: Path, folder: Path, ports: dict[str, int]) -> Iterator[subprocess.Popen[bytes]]:
    """The stack (its output in ``stack.log``) until the block ends; then it and any part it
    left are stopped."""
    with (tmp_path / "stack.log").open("wb") as log:
        command = stack_command(folder, ports)
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc, 60)
        for pid in parts_of(tmp_path, ports["broker"]).values():
            os.kill(pid, signal.SIGKILL)


def free_ports() -> dict[str, int]:
    return {name: free_port() for name in ("gateway", "monitor", "retrain", "broker")}


@pytest.mark.parametrize(
    ("part", "option"),
    [
        ("monitor", "--monitor-port (the monitor's http.port)"),
        ("retrain", "--retrain-port (the worker's http.port)"),
        ("broker", "--broker-port"),
    ],
)
def test_a_port_in_use_stops_the_stack_before_any_part_starts(
    demo_registry_template: Path, tmp_path: Path, part: str, option: str
) -> None:
    ports = free_ports()
    folder = stack_folder(tmp_path, demo_registry_template)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", ports[part]))
        holder.listen()
        with stack(tmp_path, folder, ports) as proc:
            status = proc.wait(60)
            output = (tmp_path / "stack.log").read_text(errors="replace")
            assert status == 2, output
            assert parts_of(tmp_path, ports["broker"]) == {}
    lines = output.strip().splitlines()
    assert "Traceback" not in output, output
    assert lines[-1] == (
        f"gateway: {option}: cannot listen on 127.0.0.1:{ports[part]}: "
        "[Errno 98] Address already in use"
    ), output


@pytest.mark.parametrize("part", ["monitor", "broker"])
def test_a_part_that_ends_on_its_own_stops_the_whole_stack(
    demo_registry_template: Path, tmp_path: Path, part: str
) -> None:
    ports = free_ports()
    folder = stack_folder(tmp_path, demo_registry_template)
    with stack(tmp_path, folder, ports) as proc:
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        wait_http(f"{gateway}/v2/health/ready", 120, proc)
        wait_http(f"http://127.0.0.1:{ports['monitor']}/health", 60, proc)
        wait_http(f"http://127.0.0.1:{ports['retrain']}/health", 60, proc)
        running = parts_of(tmp_path, ports["broker"])
        assert sorted(running) == sorted(PARTS)
        os.kill(running[part], signal.SIGKILL)
        # not a gateway left answering "ready" without its broker or its monitor
        status = proc.wait(90)
        output = (tmp_path / "stack.log").read_text(errors="replace")
        assert status == 1, output[-3000:]
        assert parts_of(tmp_path, ports["broker"]) == {}
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{gateway}/v2/health/live", timeout=5)
    name = {"monitor": "the drift monitor", "broker": "the embedded broker"}[part]
    assert f"{name} (pid {running[part]}) ended on its own (signal 9)" in output, output[-3000:]
    assert output.rstrip().endswith(f"stopped: {name} (pid {running[part]}) ended on its own "
                                    "(signal 9)"), output[-3000:]  # fmt: skip


def test_no_part_outlives_a_stack_killed_with_sigkill(
    demo_registry_template: Path, tmp_path: Path
) -> None:
    ports = free_ports()
    folder = stack_folder(tmp_path, demo_registry_template)
    with stack(tmp_path, folder, ports) as proc:
        wait_http(f"http://127.0.0.1:{ports['gateway']}/v2/health/ready", 120, proc)
        wait_http(f"http://127.0.0.1:{ports['monitor']}/health", 60, proc)
        wait_http(f"http://127.0.0.1:{ports['retrain']}/health", 60, proc)
        running = parts_of(tmp_path, ports["broker"])
        assert sorted(running) == sorted(PARTS)
        kill_and_wait_ended(proc, running)  # no chance to stop its parts itself
