"""The monitor's and the retraining worker's processes with their port taken, or a state_dir
they cannot make: one line naming the setting, exit 2, no traceback (uvicorn exited from inside
its task; the state folder's error came from the first snapshot or the job store)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from monitors.broker import BrokerError, EmbeddedBroker

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port another program listens on, while the block runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def run_module(args: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``python -m ARGS`` from the repository, expecting exit status 2; its stderr's line."""
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert "\n" not in line
    return line


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["run", "--config", "examples/monitor.yaml"], "MONITOR_HTTP__PORT"),
        (["retrain", "serve", "--config", "examples/retrain.yaml"], "RETRAIN_HTTP__PORT"),
    ],
)
def test_a_port_in_use_is_one_line_and_exit_2(command: list[str], env: str, tmp_path: Path) -> None:
    with taken_port() as port:
        environment = {
            **os.environ,
            env: str(port),
            "MONITOR_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nobody: it never gets that far
            "MONITOR_STATE_DIR": str(tmp_path / "monitor"),
            "RETRAIN_STATE_DIR": str(tmp_path / "retrain"),
        }
        line = run_module(["monitors", *command], environment)
    assert f"http.port: cannot listen on 127.0.0.1:{port}: " in line
    assert line.endswith("Address already in use")


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["run", "--config", "examples/monitor.yaml"], "MONITOR"),
        (["retrain", "serve", "--config", "examples/retrain.yaml"], "RETRAIN"),
    ],
)
def test_a_state_dir_that_cannot_be_made_is_one_line_and_exit_2(
    command: list[str], env: str, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    with taken_port() as port:
        pass  # free again: nothing listens there
    state_dir = tmp_path / "a-file" / "state"
    environment = {
        **os.environ,
        f"{env}_HTTP__PORT": str(port),
        f"{env}_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nobody: it never gets that far
        f"{env}_STATE_DIR": str(state_dir),
    }
    line = run_module(["monitors", *command], environment)
    assert f": state_dir: cannot create {state_dir}: " in line


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["monitors", "run", "--config", "examples/monitor.yaml"], "MONITOR_KAFKA__"),
        (["monitors", "retrain", "serve", "--config", "examples/retrain.yaml"], "RETRAIN_KAFKA__"),
        (["gateway", "serve", "--config", "examples/gateway.yaml"], "GATEWAY_FEATURE_LOG__"),
    ],
)
def test_a_tls_file_that_cannot_be_read_is_one_line_and_exit_2(
    command: list[str], env: str, tmp_path: Path
) -> None:
    with taken_port() as port:
        pass  # free again: nothing listens there
    missing = tmp_path / "ca.crt"
    environment = {
        **os.environ,
        "MONITOR_HTTP__PORT": str(port),
        "RETRAIN_HTTP__PORT": str(port),
        "GATEWAY_SERVER__PORT": str(port),
        "MONITOR_STATE_DIR": str(tmp_path / "monitor"),
        "RETRAIN_STATE_DIR": str(tmp_path / "retrain"),
        "GATEWAY_FEATURE_LOG__SPOOL_DIR": str(tmp_path / "spool"),
        "GATEWAY_FEEDBACK__SPOOL_DIR": str(tmp_path / "feedback-spool"),
        f"{env}BOOTSTRAP_SERVERS": "127.0.0.1:1",
        f"{env}SECURITY_PROTOCOL": "SSL",
        f"{env}SSL_CAFILE": str(missing),
    }
    line = run_module(command, environment)
    setting = env.removesuffix("__").lower().split("_", 1)[1]
    assert f"{setting}.ssl_cafile: cannot read {missing}: " in line


def test_the_broker_refuses_a_port_in_use_instead_of_taking_its_listener() -> None:
    # its start-up wait connected to whatever listened there and took it for the broker
    with taken_port() as port:
        with pytest.raises(BrokerError, match=f"cannot listen on 127.0.0.1:{port}"):
            EmbeddedBroker(port).start()
        line = run_module(["monitors.broker", "--port", str(port)])
    assert line.startswith(f"monitors.broker: the broker's port: cannot listen on 127.0.0.1:{port}")
    assert line.endswith("Address already in use")
