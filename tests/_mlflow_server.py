"""A real ``mlflow server`` for the tests, and helpers to register models in it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from tests._support import free_port, wait_http

__all__ = ["mlflow_server", "register_in_mlflow", "set_alias"]


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """Run ``mlflow server`` (sqlite store, proxied artifacts) on a free port; yield its URL."""
    port = free_port()
    log_path = root / "mlflow-server.log"
    mlflow = Path(sys.executable).parent / "mlflow"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(mlflow), "server",
             "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
             "--artifacts-destination", str(root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}/health", 120.0, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{log_path.read_text()[-3000:]}") from exc
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def register_in_mlflow(
    url: str,
    name: str,
    version_dir: Path,
    alias: str | None = None,
    *,
    source: Literal["artifacts", "runs", "run-root", "logged-model"] = "artifacts",
) -> str:
    """Log a version folder to MLflow and register it; returns the version.

    ``source`` picks the version's source URI: the folder's ``mlflow-artifacts:`` URI, its
    ``runs:/<id>/model`` URI, the run's root (the files then sit in a ``model/`` subfolder), or
    an MLflow 3 logged model (``models:/m-<id>``).
    """
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(url)
    client = MlflowClient(url)
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        model_id = None
        if source == "logged-model":
            logged = client.create_logged_model(run.info.experiment_id, source_run_id=run_id)
            model_id = logged.model_id
            client.log_model_artifacts(model_id, str(version_dir))
            client.finalize_logged_model(model_id, "READY")
            uri = f"models:/{model_id}"
        else:
            mlflow.log_artifacts(str(version_dir), artifact_path="model")
            uri = {
                "artifacts": mlflow.get_artifact_uri("model"),
                "runs": f"runs:/{run_id}/model",
                "run-root": f"runs:/{run_id}",
            }[source]
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    created = client.create_model_version(name, source=uri, run_id=run_id, model_id=model_id)
    version = str(created.version)
    if alias is not None:
        client.set_registered_model_alias(name, alias, version)
    return version


def set_alias(url: str, name: str, alias: str, version: str) -> None:
    """Move an alias in the MLflow registry."""
    from mlflow import MlflowClient

    MlflowClient(url).set_registered_model_alias(name, alias, version)
