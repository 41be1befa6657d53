"""End-to-end: the real ``gateway serve`` process, an unchanged Triton HTTP client, swaps, shutdown."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_breast_cancer

from registry_client import LocalRegistry
from tests._support import start_gateway

pytestmark = pytest.mark.e2e

X = load_breast_cancer().data.astype(np.float32)


def config(registry: Path, **batching: object) -> dict[str, object]:
    return {
        "registry": {"backend": "local", "root": str(registry), "poll_interval_s": 0.2},
        "batching": {"max_batch_size": 32, "max_batch_delay_s": 0.002, **batching},
        "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
    }


def reference(registry: Path, version: str, rows: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(registry / "breast_cancer" / version / "model.onnx"))
    outputs: list[np.ndarray] = session.run(None, {"input": rows})
    return outputs


@pytest.mark.parametrize("binary", [False, True])
def test_unchanged_triton_client_json_and_binary(
    demo_registry: Path, tmp_path: Path, binary: bool
) -> None:
    with start_gateway(tmp_path, config(demo_registry)) as gw:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{gw.port}")
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("breast_cancer")
        meta = client.get_model_metadata("breast_cancer")
        assert meta["inputs"][0]["shape"] == [-1, 30]
        rows = X[:5]
        tensor = triton.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        outputs = [
            triton.InferRequestedOutput("label", binary_data=binary),
            triton.InferRequestedOutput("probabilities", binary_data=not binary),
        ]
        result = client.infer("breast_cancer", [tensor], outputs=outputs, request_id="t-1")
        label, probabilities = reference(demo_registry, "1", rows)
        assert np.array_equal(result.as_numpy("label"), label)
        assert np.allclose(result.as_numpy("probabilities"), probabilities, atol=1e-6)
        response = result.get_response()
        assert response["id"] == "t-1"
        assert response["model_version"] == "1"
        versioned = client.infer("breast_cancer", [tensor], model_version="1")
        assert np.array_equal(versioned.as_numpy("label"), label)
        with pytest.raises(triton.InferenceServerException, match="no version '5'"):
            client.infer("breast_cancer", [tensor], model_version="5")
        client.close()


def test_alias_move_under_load_fails_no_request(demo_registry: Path, tmp_path: Path) -> None:
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def send(url: str) -> None:
        with httpx.Client(timeout=10) as http:
            i = 0
            while not stop.is_set():
                row = X[i % len(X)].tolist()
                i += 1
                response = http.post(
                    url,
                    json={"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]},
                )  # fmt: skip
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["model_version"])

    with start_gateway(tmp_path, config(demo_registry)) as gw:
        url = f"{gw.url}/v2/models/breast_cancer/infer"
        threads = [threading.Thread(target=send, args=(url,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        LocalRegistry(demo_registry).set_alias("breast_cancer", "champion", "2")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (not versions or versions[-1] != "2"):
            time.sleep(0.05)
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join()
        metrics = httpx.get(f"{gw.url}/metrics").text
    assert len(statuses) > 200
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    first_v2 = versions.index("2")
    assert set(versions[:first_v2]) == {"1"}
    assert set(versions[first_v2 + 50 :]) == {"2"}  # a few answered by v1 may still finish late
    assert 'gateway_model_swaps_total{model="breast_cancer",variant="default"} 1.0' in metrics


def test_sigterm_finishes_requests_in_flight(demo_registry: Path, tmp_path: Path) -> None:
    results: list[int] = []

    def send(url: str) -> None:
        body = {
            "inputs": [
                {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": X[0].tolist()}
            ]
        }
        results.append(httpx.post(url, json=body, timeout=10).status_code)

    # Batches wait up to 1 s for company, so the requests are still queued at SIGTERM.
    with start_gateway(tmp_path, config(demo_registry, max_batch_delay_s=1.0)) as gw:
        url = f"{gw.url}/v2/models/breast_cancer/infer"
        threads = [threading.Thread(target=send, args=(url,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        code = gw.stop()
        for thread in threads:
            thread.join()
    assert results == [200] * 8
    # uvicorn re-raises the signal it handled once shutdown is complete
    assert code in (0, -15)
    log = gw.log()
    assert "Application shutdown complete" in log
    assert "Finished server process" in log


def test_invalid_config_fails_at_start_naming_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("batching: {max_batch_size: 0}\nmodels: [{name: m, ref: 'm@x'}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "batching.max_batch_size" in result.stderr
    env_bad = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert env_bad.returncode == 2
    assert "does not exist" in env_bad.stderr


def test_a_caller_that_disconnects_leaves_the_queue_before_its_batch_runs(
    demo_registry: Path, tmp_path: Path
) -> None:
    import json
    import socket

    # Batches wait the whole 0.5 s for company: the caller hangs up while its request is queued.
    batching = config(demo_registry, max_batch_delay_s=0.5, close_when_idle=False)
    with start_gateway(tmp_path, batching) as gw:
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                       "data": X[0].tolist()}]}).encode()  # fmt: skip
        head = (f"POST /v2/models/breast_cancer/infer HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(head.encode() + body)
            time.sleep(0.1)
        time.sleep(1.0)  # the batch deadline passes
        metrics = httpx.get(f"{gw.url}/metrics").text
    outcome = 'gateway_requests_total{model="breast_cancer",outcome="cancelled",variant="default",version="1"} 1.0'
    assert outcome in metrics
    no_batch = 'gateway_batch_rows_count{model="breast_cancer",variant="default",version="1"} 0.0'
    assert no_batch in metrics, "the cancelled request never reached onnxruntime"
