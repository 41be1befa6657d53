"""End-to-end, as an MLflow user works: a scikit-learn pipeline on named columns, converted with
skl2onnx, logged with ``mlflow.onnx.log_model(signature=infer_signature(X, y), ...)`` to a real
``mlflow server`` and given an alias; the gateway serves it by its features' names and logs them,
``python -m monitors profile build`` stores the training frame's profile with the version, and
the monitor reads it from MLflow and fires the drift webhook on drifted traffic.

Two ONNX layouts: one 2-D input (logged with ``metadata=``), and one input per column whose names
skl2onnx cleans up (``od280/od315_of_diluted_wines``; logged without ``metadata=``). A version of
the sklearn flavour gets the named error while the other endpoints stay ready.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from monitors.broker import EmbeddedBroker, create_topics
from tests._kafka import read_records
from tests._support import GatewayProcess, free_port, start_gateway
from tests._support import start_monitor as monitor
from tests.monitors.test_monitor_e2e import Receiver

pytestmark = pytest.mark.e2e

Frame = Any  # a pandas DataFrame (pandas ships no type stubs)

WINE = load_wine(as_frame=True)
X: Frame = WINE.data.astype(np.float32)
Y = WINE.target
NAMES = [str(c) for c in X.columns]
RENAMED = "od280/od315_of_diluted_wines"
LABELS = [str(n) for n in WINE.target_names]
DRIFTED = ["alcohol", "proline", RENAMED]
TOPIC = "inference-log"


@dataclass(frozen=True)
class Logged:
    """A registered model version as the user logged it."""

    name: str
    version: str
    session: ort.InferenceSession | None


@dataclass(frozen=True)
class Models:
    matrix: Logged  # one 2-D input, logged with metadata=
    columns: Logged  # one input per column, logged without metadata=
    sklearn: Logged  # the sklearn flavour


def log_onnx(url: str, name: str, pipeline: Pipeline, sample: Any, **extra: Any) -> Logged:
    """Convert with skl2onnx and log with mlflow.onnx.log_model, as the user does."""
    import mlflow
    from mlflow.models import infer_signature
    from skl2onnx import to_onnx

    onx = to_onnx(pipeline, sample, options={"zipmap": False})
    mlflow.set_tracking_uri(url)
    with mlflow.start_run():
        info = mlflow.onnx.log_model(
            onx,
            name="model",
            signature=infer_signature(X, Y),
            input_example=X.iloc[:2],
            registered_model_name=name,
            **extra,
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient(url).set_registered_model_alias(name, "champion", version)
    return Logged(name, version, ort.InferenceSession(onx.SerializeToString()))


@pytest.fixture(scope="module")
def models(mlflow_url: str) -> Models:
    # MLflow warns about its own internals while it logs (type hints, environments): not ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return log_models(mlflow_url)


def log_models(mlflow_url: str) -> Models:
    import mlflow

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, Y)
    suffix = uuid.uuid4().hex[:6]
    matrix = log_onnx(
        mlflow_url,
        f"Wine classifier {suffix}",
        pipeline,
        X.to_numpy()[:1],
        metadata={"class_labels": LABELS, "owner": "wine team"},
    )
    columns = log_onnx(mlflow_url, f"wine (one input per column) {suffix}", pipeline, X.iloc[:1])
    name = f"wine sklearn {suffix}"
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipeline, name="model", registered_model_name=name, pip_requirements=["scikit-learn"]
        )
    return Models(matrix, columns, Logged(name, str(info.registered_model_version), None))


def gateway_config(mlflow_url: str, models: Models, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "registry": {"backend": "mlflow", "mlflow_url": mlflow_url,
                     "cache_dir": str(tmp_path / "cache"), "poll_interval_s": 1.0},
        "models": [
            # the forms MLflow users write: URL-encoded, raw with spaces, bare name@alias
            {"name": "wine", "ref": f"models:/{quote(models.matrix.name)}@champion"},
            {"name": "wine-columns", "ref": f"models:/{models.columns.name}/{models.columns.version}"},
            {"name": "legacy", "ref": f"{models.sklearn.name}@latest"},
        ],
        **extra,
    }  # fmt: skip


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def only_legacy_not_ready(gw: GatewayProcess) -> dict[str, Any] | None:
    doc: dict[str, Any] = httpx.get(f"{gw.url}/v2/health/ready").json()
    problems = doc.get("not_ready", {})
    if list(problems) == ["legacy"] and problems["legacy"]["default"] != "loading":
        return doc
    return None


def predict(gw: GatewayProcess, endpoint: str, rows: Frame) -> httpx.Response:
    instances = [{k: float(v) for k, v in row.items()} for row in rows.to_dict("records")]
    return httpx.post(f"{gw.url}/v1/models/{endpoint}:predict", json={"instances": instances})


def expected_labels(logged: Logged, rows: Frame) -> list[int]:
    assert logged.session is not None
    inputs = logged.session.get_inputs()
    if len(inputs) == 1:
        feed = {inputs[0].name: rows.to_numpy()}
    else:  # the graph's inputs in column order, under skl2onnx's names
        feed = {i.name: rows[[c]].to_numpy() for i, c in zip(inputs, rows.columns, strict=True)}
    labels: list[int] = logged.session.run(["label"], feed)[0].tolist()
    return labels


def test_named_features_metadata_sources_and_a_sklearn_version_named(
    mlflow_url: str, models: Models, tmp_path: Path
) -> None:
    rows = X.iloc[[0, 60, 130, 177]]
    admin = {"admin": {"tokens": {"ops": "t0ken"}}}
    with start_gateway(tmp_path, gateway_config(mlflow_url, models, tmp_path, **admin)) as gw:
        ready = wait_for(lambda: only_legacy_not_ready(gw), "wine and wine-columns to load")
        # a route change in MLflow's words: the alias (URL-encoded) and the pinned version
        name, version = models.matrix.name, models.matrix.version
        variants = [
            {"name": "champion", "ref": f"models:/{quote(name)}@champion", "weight": 50},
            {"name": "pinned", "ref": f"models:/{name}/{version}", "weight": 50},
        ]
        auth = {"authorization": "Bearer t0ken"}
        put = httpx.put(
            f"{gw.url}/admin/routes/wine", json={"variants": variants}, headers=auth, timeout=60
        )
        assert put.status_code == 200, put.text
        stage = [{"name": "x", "ref": f"models:/{quote(name)}/Production", "weight": 100}]
        refused_stage = httpx.put(
            f"{gw.url}/admin/routes/wine", json={"variants": stage}, headers=auth
        )
        assert refused_stage.status_code == 400
        assert "stages are not supported" in refused_stage.json()["error"]
        for endpoint, logged in (("wine", models.matrix), ("wine-columns", models.columns)):
            answer = predict(gw, endpoint, rows)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == logged.version
            labels = [p["label"] for p in answer.json()["predictions"]]
            assert labels == expected_labels(logged, rows)
        matrix = httpx.get(f"{gw.url}/v2/models/wine").json()
        columns = httpx.get(f"{gw.url}/v2/models/wine-columns").json()
        refused = httpx.post(f"{gw.url}/v2/models/legacy/infer", json={"inputs": []})
        ready_all = httpx.get(f"{gw.url}/v2/health/ready")

    flavour_error = (
        "flavours [python_function, sklearn]; the gateway serves the onnx flavour: convert "
        "with skl2onnx and log with mlflow.onnx.log_model"
    )
    assert ready["ready"] is True
    assert flavour_error in ready["not_ready"]["legacy"]["default"]
    assert ready_all.status_code == 200
    assert refused.status_code == 503
    assert flavour_error in refused.json()["error"]

    # one 2-D input: the signature's columns are its features; labels from metadata=
    assert matrix["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 13]}]
    parameters = matrix["parameters"]
    assert [f["name"] for f in parameters["features"]] == NAMES
    assert parameters["class_labels"] == LABELS
    assert parameters["sources"] == {
        "model_file": "MLmodel flavors.onnx.data",
        "features": "MLmodel signature.inputs",
        "class_labels": "MLmodel metadata",
    }
    # one input per column: callers and the metadata keep the signature's names
    parameters = columns["parameters"]
    assert [f["name"] for f in parameters["features"]] == NAMES
    renamed = next(f for f in parameters["features"] if f["name"] == RENAMED)
    assert renamed["input"] == "od280_od315_of_diluted_wines"
    assert parameters["class_labels"] is None
    assert "class_labels" not in parameters["sources"]


async def send(gw: GatewayProcess, endpoint: str, frame: Frame, rows_per_call: int) -> None:
    instances = [{k: float(v) for k, v in row.items()} for row in frame.to_dict("records")]
    async with httpx.AsyncClient(timeout=30) as client:
        for start in range(0, len(instances), rows_per_call):
            body = {"instances": instances[start : start + rows_per_call]}
            response = await client.post(f"{gw.url}/v1/models/{endpoint}:predict", json=body)
            assert response.status_code == 200, response.text


def build_profile(mlflow_url: str, logged: Logged, csv: Path, *flags: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "monitors", "profile", "build", "--mlflow-url", mlflow_url,
         "--model", logged.name, "--version", logged.version, "--csv", str(csv), *flags],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_monitor_reads_profiles_from_mlflow_and_fires_on_drift(
    mlflow_url: str, models: Models, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    asyncio.run(create_topics(broker.bootstrap_servers, [TOPIC], partitions=2))
    # the training frame, profiled into the versions: as an artifact of the run, and as a tag
    training = tmp_path / "training.csv"
    X.to_csv(training, index=False)
    assert "runs:/" in build_profile(mlflow_url, models.matrix, training)
    assert "tag" in build_profile(mlflow_url, models.columns, training, "--mlflow-tag")

    rng = np.random.default_rng(7)
    calm = X.iloc[rng.integers(0, len(X), 300)]
    drifted = X.iloc[rng.integers(0, len(X), 600)].copy()
    drifted[DRIFTED] *= 1.5
    feature_log = {
        "enabled": True,
        "bootstrap_servers": broker.bootstrap_servers,
        "topic": TOPIC,
        "spool_dir": str(tmp_path / "spool"),
        "linger_s": 0.01,
    }
    config = gateway_config(mlflow_url, models, tmp_path, feature_log=feature_log)
    state = tmp_path / "state"
    with Receiver(fail_first=0) as receiver, start_gateway(tmp_path, config) as gw:
        wait_for(lambda: only_legacy_not_ready(gw), "wine and wine-columns to load")
        monitor_config = {
            "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": TOPIC},
            "registry": {"backend": "mlflow", "mlflow_url": mlflow_url,
                         "cache_dir": str(tmp_path / "monitor-cache")},
            "state_dir": str(state),
            "window": {"by": "count", "size": 300, "slide": 300},
            "detector": {"min_rows": 100},
            "decision": {"consecutive": 1, "cooldown_windows": 100},
            "webhooks": [{"name": "retrain", "url": receiver.url, "secret": "s"}],
            "webhook_backoff_s": 0.2,
            "http": {"port": free_port()},
        }  # fmt: skip
        with monitor(tmp_path, monitor_config):
            for endpoint in ("wine", "wine-columns"):
                asyncio.run(send(gw, endpoint, calm, 30))
                asyncio.run(send(gw, endpoint, drifted, 30))
            wait_for(lambda: len(receiver.requests) >= 2, "a drift event per model", 180)
        records = read_records(broker.bootstrap_servers, TOPIC, 60)

    events = {
        json.loads(body)["data"]["model"]: json.loads(body) for _, body, _ in receiver.requests
    }
    assert set(events) == {models.matrix.name, models.columns.name}
    for logged in (models.matrix, models.columns):
        data = events[logged.name]["data"]
        assert data["version"] == logged.version
        assert set(DRIFTED) <= set(data["drifted_features"]), data["drifted_features"]
    windows = [json.loads(line) for line in (state / "windows.jsonl").read_text().splitlines()]
    for logged in (models.matrix, models.columns):
        statuses = [w["status"] for w in windows if w["model"] == logged.name]
        assert statuses == ["ok", "drift", "drift"], statuses
    # the feature log names the registered model and the signature's features
    logged_models = {r["model"] for r in records}
    assert logged_models == {models.matrix.name, models.columns.name}
    assert all(sorted(r["features"]) == sorted(NAMES) for r in records), records[0]["features"]
