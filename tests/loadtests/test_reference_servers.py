"""The benchmarks' reference servers and the idle-cost steps do the work they claim."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson

from loadtests.bench_idle import steps, timed
from loadtests.models import build_mlp
from loadtests.scenarios import request_body
from tests._support import free_port, running_process


@contextmanager
def _server(kind: str, model: Path, logs: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "loadtests.servers", kind, "--port", str(port),
               "--model", str(model)]  # fmt: skip
    with running_process(command, logs / f"{kind}.log", f"{base}/v2/health/ready", 60.0):
        yield base


def test_the_raw_per_request_server_answers_what_the_starlette_baseline_answers(
    tmp_path: Path,
) -> None:
    model = tmp_path / "mlp.onnx"
    model.write_bytes(build_mlp().SerializeToString())
    body, _ = request_body(32, 1, False)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = np.asarray(orjson.loads(body)["inputs"][0]["data"], dtype=np.float32).reshape(1, 32)
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(None, {"input": x}), strict=True))
    answers = []
    for kind in ("baseline-raw", "baseline"):
        with _server(kind, model, tmp_path) as base, httpx.Client() as client:
            for _ in range(3):  # several requests on one keep-alive connection
                reply = client.post(f"{base}/v2/models/mlp/infer", content=body, timeout=10)
                assert reply.status_code == 200, reply.text
                answers.append(reply.json())
    first = answers[0]
    assert all(answer == first for answer in answers)
    assert first["model_name"] == "mlp"
    for output in first["outputs"]:
        want = expected[output["name"]]
        assert output["shape"] == list(want.shape)
        np.testing.assert_allclose(np.asarray(output["data"]), want.reshape(-1), rtol=1e-6)


def test_the_idle_steps_parse_run_and_encode_one_row() -> None:
    work = steps()
    parsed = work["parse"]()
    assert isinstance(parsed, np.ndarray)
    assert parsed.shape == (1, 32)
    outputs = work["run"]()
    assert isinstance(outputs, list)
    assert [o.shape for o in outputs] == [(1,), (1, 2)]
    encoded = orjson.loads(work["encode"]())  # type: ignore[arg-type]
    assert [o["name"] for o in encoded["outputs"]] == ["label", "probabilities"]
    assert timed(work["parse"], 20, 0.0) > 0
