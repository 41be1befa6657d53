"""End-to-end: KServe's Python REST client, unchanged, against the gateway process.

The kserve package pins versions that clash with the gateway's (pandas, protobuf), so it lives
in its own virtualenv, made once (``.venv-kserve``, reused by later runs) by this test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_breast_cancer

from tests._support import start_gateway

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-kserve"


def kserve_python() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "kserve>=0.13"], check=True,
                       timeout=900)  # fmt: skip
        (VENV / ".installed").touch()
    return python


def test_unchanged_kserve_rest_client(demo_registry: Path, tmp_path: Path) -> None:
    python = kserve_python()
    rows = load_breast_cancer().data[:3].astype(np.float32)
    config = {
        "registry": {"backend": "local", "root": str(demo_registry)},
        "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
    }
    with start_gateway(tmp_path, config) as gw:
        script = ROOT / "tests" / "clients" / "kserve_client.py"
        done = subprocess.run(
            [str(python), str(script), gw.url, "breast_cancer", json.dumps(rows.tolist())],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["live"] is True
    assert result["ready"] is True
    session = ort.InferenceSession(str(demo_registry / "breast_cancer" / "1" / "model.onnx"))
    label, probabilities = session.run(None, {"input": rows})
    for mode in ("json", "binary"):
        assert result[mode]["id"] == f"k-{mode == 'binary'}"
        assert result[mode]["outputs"]["label"] == label.tolist()
        assert np.allclose(result[mode]["outputs"]["probabilities"], probabilities, atol=1e-6)
