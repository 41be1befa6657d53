"""End-to-end: the gateway's own HTTP/1.1 protocol (gateway/http/server.py) over raw sockets.

Each behaviour is checked against the real ``gateway serve`` process, and the answers are
compared with uvicorn's own protocol (``server.http_protocol: uvicorn``) on the same requests.
"""

from __future__ import annotations

import gzip
import socket
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.datasets import load_breast_cancer

from tests._raw_http import closed, post, read_responses
from tests._support import start_gateway

pytestmark = pytest.mark.e2e

ROWS = load_breast_cancer().data.astype(np.float32)[:3]
PATH = b"/v2/models/breast_cancer/infer"


def config(registry: Path, protocol: str = "gateway") -> dict[str, object]:
    return {
        "server": {"http_protocol": protocol, "max_body_bytes": 4096},
        "registry": {"backend": "local", "root": str(registry), "poll_interval_s": 60},
        "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
    }


def body(row: int = 0) -> bytes:
    data = ROWS[row : row + 1]
    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 30],
                    "datatype": "FP32",
                    "data": data.ravel().tolist(),
                }
            ]
        }
    )


def labels(payload: bytes) -> list[int]:
    doc = orjson.loads(payload)
    return next(o["data"] for o in doc["outputs"] if o["name"] == "label")


@pytest.mark.parametrize("protocol", ["gateway", "uvicorn"])
def test_keep_alive_pipelining_and_errors_answer_in_order(
    demo_registry: Path, tmp_path: Path, protocol: str
) -> None:
    with (
        start_gateway(tmp_path, config(demo_registry, protocol)) as gw,
        socket.create_connection(("127.0.0.1", gw.port)) as sock,
    ):
        # three requests in one write: an inference call, a GET, a bad inference call
        sock.sendall(
            post(PATH, body(0))
            + b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n"
            + post(PATH, b'{"inputs": 3}')
            + post(PATH, body(1))
        )
        answers = read_responses(sock, 4)
        assert [status for status, _, _ in answers] == [200, 200, 400, 200]
        assert labels(answers[0][2]) == [0]
        assert orjson.loads(answers[1][2]) == {"ready": True}
        assert "inputs" in orjson.loads(answers[2][2])["error"]
        assert answers[0][1]["x-model-variant"] == "default"
        assert answers[0][1]["content-type"] == "application/json"
        # the connection stays open for more
        for row in range(3):
            sock.sendall(post(PATH, body(row)))
            ((status, _, payload),) = read_responses(sock, 1)
            assert status == 200
            assert len(labels(payload)) == 1


def test_expect_continue_gzip_and_chunked_bodies(demo_registry: Path, tmp_path: Path) -> None:
    with (
        start_gateway(tmp_path, config(demo_registry)) as gw,
        socket.create_connection(("127.0.0.1", gw.port)) as sock,
    ):
        payload = body(2)
        head = (
            b"POST " + PATH + b" HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(payload)
        )
        sock.sendall(head)
        sock.settimeout(5)
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(payload)
        ((status, _, answer),) = read_responses(sock, 1)
        assert status == 200
        packed = gzip.compress(body(0))
        sock.sendall(post(PATH, packed, b"Content-Encoding: gzip\r\n"))
        ((status, _, answer),) = read_responses(sock, 1)
        assert status == 200, answer
        raw = body(1)
        chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, raw[:10], len(raw) - 10, raw[10:])
        sock.sendall(
            b"POST "
            + PATH
            + b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked
        )
        ((status, _, answer),) = read_responses(sock, 1)
        assert status == 200, answer
        # a body split over many small writes
        request = post(PATH, body(0))
        for start in range(0, len(request), 7):
            sock.sendall(request[start : start + 7])
            time.sleep(0.001)
        ((status, _, answer),) = read_responses(sock, 1)
        assert status == 200


def test_oversized_malformed_and_http10_requests(demo_registry: Path, tmp_path: Path) -> None:
    with start_gateway(tmp_path, config(demo_registry)) as gw:
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(post(PATH, b"x" * 5000))
            ((status, headers, answer),) = read_responses(sock, 1)
            assert status == 413
            assert "4096" in orjson.loads(answer)["error"]
            assert headers["connection"] == "close"
            assert closed(sock)
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            ((status, _, answer),) = read_responses(sock, 1)
            assert status == 400
            assert "malformed HTTP request" in orjson.loads(answer)["error"]
            assert closed(sock)
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            payload = body(0)
            sock.sendall(
                b"POST "
                + PATH
                + b" HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(payload)
                + payload
            )
            ((status, headers, _),) = read_responses(sock, 1)
            assert status == 200
            assert headers["connection"] == "close"
            assert closed(sock)
        # a request id that would break the x-request-id header is refused, not echoed
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            doc = orjson.loads(body(0))
            doc["id"] = "a\r\nx-injected: 1"
            sock.sendall(post(PATH, orjson.dumps(doc)))
            ((status, headers, answer),) = read_responses(sock, 1)
            assert status == 400
            assert "x-injected" not in headers


def test_idle_connection_is_closed_after_keep_alive_timeout(
    demo_registry: Path, tmp_path: Path
) -> None:
    with (
        start_gateway(tmp_path, config(demo_registry)) as gw,
        socket.create_connection(("127.0.0.1", gw.port)) as sock,
    ):
        sock.sendall(post(PATH, body(0)))
        ((status, _, _),) = read_responses(sock, 1)
        assert status == 200
        started = time.monotonic()
        assert closed(sock, timeout_s=15)  # uvicorn's default keep-alive timeout is 5 s
        assert 4 <= time.monotonic() - started <= 12
