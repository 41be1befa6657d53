"""What the serving benchmark runs: servers, scenarios, request bodies.

Every server of a scenario serves the same ONNX file and is measured by the same open-loop
generator with the same body. Kinds of server:

- ``hello-raw``: a constant answer from a bare asyncio protocol: the generator's own ceiling.
- ``hello``: a constant answer from Starlette on uvicorn: the ceiling of Python HTTP serving.
- ``baseline``: bare Starlette, the same onnxruntime session run per request (loadtests/servers.py).
- ``baseline-raw``: the same per-request work from a bare asyncio protocol: the floor of a
  per-request Python server on this stack.
- ``gateway``: ``gateway serve`` with the scenario's config.
- ``peer``: another model server in its own virtualenv (loadtests/peers/), its batching on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PEERS", "SCENARIOS", "Peer", "Server", "request_body"]

# The batching settings every batching server gets, so that the comparison is like for like:
# at most 64 rows, and a batch waits at most 2 ms for more requests (32 rows for the heavy
# model, where 64 rows would take about 25 ms to run).
MAX_BATCH = 64
MAX_DELAY_MS = 2.0
HEAVY_BATCH = 32


@dataclass(frozen=True)
class Peer:
    """How to start one peer (``loadtests/peers/<name>_server.py``) and ask if it is ready."""

    name: str
    ready_path: str  # ``{name}`` is the model's name


PEERS = {
    "mlserver": Peer("mlserver", "/v2/health/ready"),
    "kserve": Peer("kserve", "/v2/health/ready"),
    "bentoml": Peer("bentoml", "/readyz"),
    "rayserve": Peer("rayserve", "/v2/health/ready"),
    "pytriton": Peer("pytriton", "/v2/models/{name}/ready"),
}


@dataclass
class Server:
    """One server under test in one scenario."""

    name: str
    kind: str  # hello-raw, hello, baseline, baseline-raw, gateway, peer
    gateway: dict[str, Any] = field(default_factory=dict)
    broker: bool = False
    peer: str | None = None
    max_batch: int = MAX_BATCH


@dataclass
class Scenario:
    """A model, a request body, and the servers compared on them."""

    name: str
    model: str
    rows: int
    servers: list[Server]
    binary: bool = False
    start_rate: float = 200.0
    description: str = ""


def _gateway(name: str, broker: bool = False, **config: Any) -> Server:
    batching = config.pop("batching", {"enabled": True})
    return Server(name, "gateway", gateway={"batching": batching, **config}, broker=broker)


def _peers(max_batch: int = MAX_BATCH) -> list[Server]:
    return [Server(name, "peer", peer=name, max_batch=max_batch) for name in PEERS]


_SPLIT = {
    "routes": [
        {
            "endpoint": "mlp",
            "variants": [
                {"name": "champion", "ref": "mlp/1", "weight": 90},
                {"name": "challenger", "ref": "mlp/2", "weight": 10},
            ],
        }
    ]
}
_SHADOW = {
    "routes": [
        {
            "endpoint": "mlp",
            "variants": [{"name": "champion", "ref": "mlp/1", "weight": 100}],
            "shadows": [{"name": "candidate", "ref": "mlp/2", "sample": 1.0}],
        }
    ]
}

SCENARIOS = [
    Scenario(
        "mlp",
        "mlp",
        1,
        [
            Server("hello-raw", "hello-raw"),
            Server("hello-starlette", "hello"),
            Server("starlette-per-request", "baseline"),
            _gateway("gateway-batching-logging", broker=True),
            _gateway("gateway-batching"),
            *_peers(),
        ],
        description="tabular MLP, single-row OIP v2 JSON requests",
    ),
    Scenario(
        "mlp-binary",
        "mlp",
        1,
        [
            _gateway("gateway-batching-logging", broker=True),
            Server("pytriton", "peer", peer="pytriton"),
        ],
        binary=True,
        description="tabular MLP, single-row requests in the binary tensor extension",
    ),
    Scenario(
        "mlp-32rows",
        "mlp",
        32,
        [
            Server("starlette-per-request", "baseline"),
            _gateway(
                "gateway-batching-logging",
                broker=True,
                batching={"enabled": True, "max_batch_size": 256},
            ),
            Server("pytriton", "peer", peer="pytriton", max_batch=256),
        ],
        start_rate=100,
        description="tabular MLP, 32-row OIP v2 JSON requests",
    ),
    Scenario(
        "traffic",
        "mlp",
        1,
        [
            _gateway("gateway-split-90-10-logging", broker=True, models=[], **_SPLIT),
            _gateway("gateway-shadow-100-logging", broker=True, models=[], **_SHADOW),
        ],
        description="tabular MLP, single-row JSON, a 90/10 split and a 100% shadow",
    ),
    Scenario(
        "heavy",
        "heavy",
        1,
        [
            Server("starlette-per-request", "baseline"),
            _gateway(
                "gateway-batching-logging",
                broker=True,
                batching={"enabled": True, "max_batch_size": HEAVY_BATCH},
            ),
            *_peers(HEAVY_BATCH),
        ],
        start_rate=50,
        description="compute-heavy MLP (4 x 2048), single-row OIP v2 JSON requests",
    ),
    Scenario(
        "demo",
        "breast_cancer",
        1,
        [
            Server("starlette-per-request", "baseline"),
            _gateway("gateway-batching-logging", broker=True),
        ],
        description="the demo scikit-learn model (breast cancer, 30 features), single-row JSON",
    ),
]


def request_body(features: int, rows: int, binary: bool) -> tuple[bytes, dict[str, str]]:
    """The request every server of a scenario gets: a body and its extra headers."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(rows, features)).astype(np.float32).round(4)
    tensor: dict[str, Any] = {"name": "input", "shape": [rows, features], "datatype": "FP32"}
    if not binary:
        tensor["data"] = data.ravel().tolist()
        return json.dumps({"inputs": [tensor]}).encode(), {}
    raw = data.tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}
