"""The newcomer's path: every command of the README's ``sh`` blocks, in order, pasted into a
shell in a fresh copy of the repository, against the stack that ``make serve`` starts.

The copy holds the tracked files as a clone would. ``make serve`` installs into ``.venv`` from
PyPI, which a test cannot reach; the test makes that virtualenv itself from what this test
runs on (its site-packages, the copy on the path, the console scripts that pyproject.toml
declares) and marks it installed, so make goes straight to ``gateway stack``. Ports come from
the variables the README documents. ``make serve`` runs in a process group of its own, as in a
terminal, and Ctrl-C (SIGINT to that group) must stop it quietly.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import site
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests._support import free_port, wait_http

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

# Commands the README shows that this test does not run, and why.
NOT_RUN = {
    "make test": "the whole suite, this test included",
    ".venv/bin/pytest tests/gateway -q": "part of the suite this test belongs to",
    ".venv/bin/pytest tests/integration -q": "part of the suite this test belongs to",
}
LONG_RUNNING = "make serve"


def blocks(readme: str) -> list[tuple[str, str]]:
    """Every fenced block as (language, text)."""
    found = re.findall(r"^```(\w*)\n(.*?)^```$", readme, flags=re.MULTILINE | re.DOTALL)
    return [(language, text) for language, text in found]


def commands(block: str) -> list[str]:
    """The block's commands: lines joined while a quote is open or a line ends in a backslash;
    comment-only lines dropped."""
    found: list[str] = []
    pending = ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            tokens = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if pending.rstrip().endswith("\\"):
            continue
        if tokens:
            found.append(pending)
        pending = ""
    assert not pending, f"unfinished command in a README block: {pending!r}"
    return found


def words(command: str) -> str:
    return " ".join(shlex.split(command, comments=True))


def fresh_copy(target: Path) -> Path:
    """The tracked files, a virtualenv that stands for ``pip install -e '.[demo]'``."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            (target / name.decode()).write_bytes(source.read_bytes())
    venv = target / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    packages = next((venv / "lib").glob("python3*/site-packages"))
    (packages / "_copy.pth").write_text("\n".join([str(target), *site.getsitepackages(), ""]))
    scripts = tomllib.loads((target / "pyproject.toml").read_text())["project"]["scripts"]
    for name, entry in scripts.items():
        module, function = entry.split(":")
        script = venv / "bin" / name
        script.write_text(
            f"#!{venv}/bin/python\nimport sys\nfrom {module} import {function}\n"
            f"sys.exit({function}())\n"
        )
        script.chmod(0o755)
    (venv / ".serve-installed").touch()  # newer than pyproject.toml: make installs nothing
    return target


def test_every_readme_command_works_in_order_on_a_fresh_copy(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    fenced = blocks(readme)
    unlabelled = [text[:60] for language, text in fenced if not language]
    assert unlabelled == [], "every README block names its language (sh blocks are run)"
    shown = [c for language, text in fenced if language == "sh" for c in commands(text)]
    assert set(NOT_RUN) <= {words(c) for c in shown}, "NOT_RUN lists commands the README has"
    assert [c for c in shown if words(c) == LONG_RUNNING], "the README starts with make serve"

    repo = fresh_copy(tmp_path / "repo")
    # a fresh terminal: no settings of ours, and not inside CI's `make test` (a make started
    # from make prints "Entering/Leaving directory" around the stack's own log)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEWAY_", "MONITOR_", "RETRAIN_", "MAKE", "MFLAGS"))
           and k != "PYTHONPATH"}  # fmt: skip
    ports = {"GATEWAY_PORT": free_port(), "MONITOR_PORT": free_port(),
             "RETRAIN_PORT": free_port(), "BROKER_PORT": free_port()}  # fmt: skip
    env.update({k: str(v) for k, v in ports.items()})
    exports: list[str] = []
    stack: subprocess.Popen[bytes] | None = None
    stack_log = tmp_path / "make-serve.log"
    try:
        for command in shown:
            if words(command) in NOT_RUN:
                continue
            if words(command) == LONG_RUNNING:
                with stack_log.open("wb") as out:
                    stack = subprocess.Popen(
                        ["bash", "-c", command], cwd=repo, env=env, stdout=out,
                        stderr=subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                wait_http(f"http://127.0.0.1:{ports['GATEWAY_PORT']}/v2/health/ready", 180, stack)
                wait_http(f"http://127.0.0.1:{ports['MONITOR_PORT']}/health", 60, stack)
                wait_http(f"http://127.0.0.1:{ports['RETRAIN_PORT']}/health", 60, stack)
                continue
            script = "\n".join(["set -euo pipefail", *exports, command])
            done = subprocess.run(
                ["bash", "-c", script], cwd=repo, env=env, capture_output=True, timeout=120
            )
            output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
            assert done.returncode == 0, f"{command}\nfailed ({done.returncode}):\n{output}"
            assert '{"error"' not in output, f"{command}\nanswered an error:\n{output}"
            if command.startswith("export "):
                exports.append(command)
        assert stack is not None
        started = stack_log.read_text(errors="replace")
        assert f"drift monitor http://127.0.0.1:{ports['MONITOR_PORT']}/status" in started
        assert f"retraining worker http://127.0.0.1:{ports['RETRAIN_PORT']}/jobs" in started
        os.killpg(stack.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        # make ends by the signal it got (as a shell expects) once gateway stack has stopped
        assert stack.wait(90) in (0, -signal.SIGINT)
        # make may be gone before the stack has stopped its monitor and broker and said so
        deadline = time.monotonic() + 60
        while running_in(repo) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if stack is not None and stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()
    log = stack_log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
    assert "ERROR" not in log, log[-4000:]
    assert log.rstrip().endswith("gateway.stack: stopped"), log[-2000:]
    assert running_in(repo) == [], "Ctrl-C stopped the broker, the monitor and the worker too"


def running_in(directory: Path) -> list[str]:
    """Command lines of the processes whose working directory is ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cwd").resolve() == directory.resolve():
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found
