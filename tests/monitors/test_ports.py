"""The monitor's and the retraining worker's processes with their port taken: one line naming
the setting and the address, exit 2, no traceback (uvicorn exited from inside its task)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from monitors.broker import BrokerError, EmbeddedBroker

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["run", "--config", "examples/monitor.yaml"], "MONITOR_HTTP__PORT"),
        (["retrain", "serve", "--config", "examples/retrain.yaml"], "RETRAIN_HTTP__PORT"),
    ],
)
def test_a_port_in_use_is_one_line_and_exit_2(command: list[str], env: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environment = {
            **os.environ,
            env: str(port),
            "MONITOR_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nobody: it never gets that far
            "MONITOR_STATE_DIR": str(tmp_path / "monitor"),
            "RETRAIN_STATE_DIR": str(tmp_path / "retrain"),
        }
        done = subprocess.run(
            [sys.executable, "-m", "monitors", *command],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert f"http.port: cannot listen on 127.0.0.1:{port}: " in line
    assert line.endswith("Address already in use")
    assert "\n" not in line
    assert "Traceback" not in done.stderr


def test_the_broker_refuses_a_port_in_use_instead_of_taking_its_listener() -> None:
    # its start-up wait connected to whatever listened there and took it for the broker
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"cannot listen on 127.0.0.1:{port}"):
            EmbeddedBroker(port).start()
        done = subprocess.run(
            [sys.executable, "-m", "monitors.broker", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert line.startswith(f"monitors.broker: the broker's port: cannot listen on 127.0.0.1:{port}")
    assert line.endswith("Address already in use")
    assert "\n" not in line
