"""End-to-end: the real ``gateway serve`` process, an unchanged Triton HTTP client, swaps, shutdown."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_breast_cancer

from registry_client import LocalRegistry
from tests._models import register_slow_version
from tests._support import children_of, kill_and_wait_ended, start_gateway

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
        wait_until(lambda: len(statuses) >= 150, "150 answers before the move")
        LocalRegistry(demo_registry).set_alias_sync("breast_cancer", "champion", "2")
        wait_until(lambda: versions.count("2") >= 150, "150 answers by version 2")
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


def test_a_version_swapped_out_hands_its_memory_back(demo_registry: Path, tmp_path: Path) -> None:
    # glibc kept an unloaded session's memory in its arenas: swapping a 113 MB model in and
    # out four times left the process at 580 MB instead of 108 MB
    big = register_slow_version(demo_registry, alias="big")
    registry = LocalRegistry(demo_registry)
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                        "data": X[0].tolist()}]}  # fmt: skip

    def served() -> str:
        answer = httpx.post(f"{gw.url}/v2/models/breast_cancer/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["model_version"])

    with start_gateway(tmp_path, config(demo_registry)) as gw:
        assert served() == "1"
        baseline = resident_bytes(gw.proc.pid)
        unloaded = f"version {big} unloaded"
        for swap in (1, 2):
            registry.set_alias_sync("breast_cancer", "champion", big)
            wait_until(lambda: served() == big, "the big version serving")
            registry.set_alias_sync("breast_cancer", "champion", "1")
            wait_until(lambda swap=swap: gw.log().count(unloaded) == swap, "it unloading")  # type: ignore[misc]
        wait_until(
            lambda: resident_bytes(gw.proc.pid) < baseline + 50 * 2**20,
            "the process back within 50 MB of where it started",
            timeout_s=10,
        )


def resident_bytes(pid: int) -> int:
    """The resident set size of a process (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def metric_value(base_url: str, line_start: str) -> float:
    """The value of the first metrics line that starts with ``line_start`` (0 when none)."""
    for line in httpx.get(f"{base_url}/metrics", timeout=30).text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll ``condition`` until it holds; the generous bound only turns a hang into a failure."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.05)


def _tcp_queues(port: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(local port, remote port) -> (send queue, receive queue) of every established loopback
    TCP socket with ``port`` at one end (Linux ``/proc/net/tcp``)."""
    queues: dict[tuple[int, int], tuple[int, int]] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(end.split(":")[1], 16) for end in fields[1:3])
        if fields[3] == "01" and port in (local, remote):  # 01: ESTABLISHED
            tx, rx = (int(q, 16) for q in fields[4].split(":"))
            queues[(local, remote)] = (tx, rx)
    return queues


def read_by_server(port: int, clients: list[socket.socket]) -> bool:
    """Whether the server has read every byte the ``clients`` sent it (so the requests are
    its: accepted, parsed and in flight), seen from the kernel's socket queues."""
    queues = _tcp_queues(port)
    for client in clients:
        mine = client.getsockname()[1]
        if queues.get((mine, port), (1, 0))[0] or queues.get((port, mine), (0, 1))[1]:
            return False
    return True


def raw_infer(port: int) -> socket.socket:
    """A connection with one single-row inference request written on it."""
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                   "data": X[0].tolist()}]}).encode()  # fmt: skip
    head = (f"POST /v2/models/breast_cancer/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head.encode() + body)
    return sock


def status_of(sock: socket.socket) -> int:
    """The status of the response read from ``sock`` (then closed)."""
    with sock, sock.makefile("rb") as answer:
        return int(answer.readline().split()[1])


def test_sigterm_finishes_requests_in_flight(demo_registry: Path, tmp_path: Path) -> None:
    # A batch waits 3 s for company (and the requests' deadline is far): SIGTERM comes once
    # the gateway has read all eight requests, while they wait in its queue.
    batching = config(demo_registry, max_batch_delay_s=3.0, close_when_idle=False, timeout_s=60.0)
    with start_gateway(tmp_path, batching) as gw:
        clients = [raw_infer(gw.port) for _ in range(8)]
        wait_until(lambda: read_by_server(gw.port, clients), "the gateway reading the requests")
        code = gw.stop()
        results = [status_of(client) for client in clients]
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
    # Batches wait 5 s for company: the caller hangs up while its request is queued.
    batching = config(demo_registry, max_batch_delay_s=5.0, close_when_idle=False, timeout_s=60.0)
    with start_gateway(tmp_path, batching) as gw:
        with raw_infer(gw.port) as sock:
            wait_until(lambda: read_by_server(gw.port, [sock]), "the gateway reading it")
        cancelled = 'gateway_requests_total{model="breast_cancer",outcome="cancelled"'
        wait_until(lambda: metric_value(gw.url, cancelled) == 1, "the cancellation counted")
        # the next request's batch is the first one taken after the hang-up
        assert status_of(raw_infer(gw.port)) == 200
        metrics = httpx.get(f"{gw.url}/metrics").text
    outcome = 'gateway_requests_total{model="breast_cancer",outcome="cancelled",variant="default",version="1"} 1.0'
    assert outcome in metrics
    one_row = 'gateway_batch_rows_sum{model="breast_cancer",variant="default",version="1"} 1.0'
    assert one_row in metrics, "the cancelled request never reached onnxruntime"


def test_parse_processes_end_with_a_gateway_killed_with_sigkill(
    demo_registry: Path, tmp_path: Path
) -> None:
    large = {
        "inputs": [
            {"name": "input", "shape": [len(X) * 2, 30], "datatype": "FP32",
             "data": np.tile(X, (2, 1)).tolist()}
        ]
    }  # fmt: skip
    parsed = 'gateway_large_bodies_total{parsed_in="process"}'
    with start_gateway(tmp_path, config(demo_registry)) as gw:
        url = f"{gw.url}/v2/models/breast_cancer/infer"
        # the first large body starts the parse process (and is parsed on a thread meanwhile)
        while metric_value(gw.url, parsed) == 0:
            assert httpx.post(url, json=large, timeout=30).status_code == 200
        children = children_of(gw.proc.pid)  # the parse process, multiprocessing's tracker
        assert children
        kill_and_wait_ended(gw.proc, {f"child {pid}": pid for pid in children})
