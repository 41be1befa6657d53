"""End-to-end: hostile HTTP clients against the real gateway process, over raw sockets.

Every class of issue #11's HTTP edge: refusals answered in order then closed, the head limits
and their statuses, early 413 and ``Expect``, strict parsing, nothing answering 500, bounded
memory; and hypothesis-built request pipelines, each of which must be answered or closed,
never left hanging, never 5xx, every error ``{"error": ...}``.
"""

from __future__ import annotations

import contextlib
import gzip
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer

from tests._raw_http import Response, closed, post, read_responses, read_until_closed
from tests._support import GatewayProcess, demo_gateway

pytestmark = pytest.mark.e2e

ROW = load_breast_cancer().data.astype(np.float32)[0]
INFER = b"/v2/models/breast_cancer/infer"
TOKEN = "abuse-test-token"
HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 3


def infer_body(data: object = None, shape: object = (1, 30)) -> bytes:
    values = ROW.tolist() if data is None else data
    doc = {"inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32", "data": values}]}  # type: ignore[call-overload]
    return orjson.dumps(doc)


GOOD = post(INFER, infer_body())
GET_LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
CHUNKED = b"POST " + INFER + b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.fixture(scope="module")
def gateway(
    demo_registry_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway for the module: default limits but short head and body timeouts and
    keep-alive."""
    with demo_gateway(
        tmp_path_factory.mktemp("abuse"),
        demo_registry_template,
        TOKEN,
        server={
            "head_timeout_s": HEAD_TIMEOUT_S,
            "body_timeout_s": BODY_TIMEOUT_S,
            "keep_alive_s": 1,
            "send_timeout_s": 2,
        },
    ) as gw:
        yield gw


def exchange(
    gw: GatewayProcess, data: bytes, timeout_s: float = 15.0
) -> tuple[list[Response], bool]:
    """Send ``data`` in one write; every response until the gateway closes, and whether it did."""
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(data)
        return read_until_closed(sock, timeout_s)


def error_of(response: Response) -> str:
    status, headers, body = response
    assert status >= 400
    assert headers["content-type"] == "application/json"
    message = orjson.loads(body)["error"]
    assert isinstance(message, str)
    return message


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- refusals are answered in turn, then the connection closes ---------------------------------

REFUSED = {
    "absolute-form URL over 64 KiB": (b"GET http://x/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    "URL over 8 KiB": (b"POST /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 414),
    "not HTTP": (b"NOT HTTP AT ALL\r\n\r\n", 400),
    "HTTP/0.9": (b"GET /v2\r\n\r\n", 400),
    "HTTP/2.0 text": (b"GET /v2 HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    "HTTP/1.2": (b"GET /v2 HTTP/1.2\r\nHost: t\r\n\r\n", 505),
    "no Host": (b"GET /v2 HTTP/1.1\r\n\r\n", 400),
    "two Hosts": (b"GET /v2 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "gzip transfer coding": (b"POST /v2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    "101 headers": (b"GET /v2 HTTP/1.1\r\nHost: t\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
    "17 KiB header": (b"GET /v2 HTTP/1.1\r\nHost: t\r\nx-big: " + b"a" * 17_000 + b"\r\n\r\n", 431),
    "body over the limit": (b"POST " + INFER + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999\r\n\r\n", 413),
    "unknown expectation": (b"POST " + INFER + b" HTTP/1.1\r\nHost: t\r\nExpect: magic\r\nContent-Length: 2\r\n\r\n{}", 417),
    "websocket upgrade": (b"GET /v2 HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", 400),
    "CONNECT": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 400),
    "Transfer-Encoding and Content-Length": (b"POST " + INFER + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "two Content-Lengths": (b"POST " + INFER + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
    "folded header": (b"GET /v2 HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n", 400),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_request_is_answered_after_the_earlier_ones_then_closed(
    gateway: GatewayProcess, case: str
) -> None:
    refused, status = REFUSED[case]
    responses, was_closed = exchange(gateway, GOOD + GET_LIVE + refused + GOOD)
    assert was_closed, f"left hanging after {[r[0] for r in responses]}"
    assert [r[0] for r in responses] == [200, 200, status]
    assert orjson.loads(responses[1][2]) == {"live": True}
    assert responses[2][1]["connection"] == "close"
    error_of(responses[2])


def test_absolute_form_urls_are_served(gateway: GatewayProcess) -> None:
    responses, _ = exchange(
        gateway,
        b"GET http://other/v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
        + post(b"http://other" + INFER, infer_body(), b"Connection: close\r\n"),
    )
    assert [r[0] for r in responses] == [200, 200]


# -- head limits ------------------------------------------------------------------------------


def test_head_limits_take_what_is_within_them(gateway: GatewayProcess) -> None:
    path = b"/v2/models/" + b"m" * (8192 - len(b"/v2/models/"))
    assert len(path) == 8192
    headers = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 100) for i in range(98))  # under 16 KiB
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
        ((status, _, body),) = read_responses(sock, 1)
        assert status == 404
        assert "unknown model" in orjson.loads(body)["error"]


@pytest.mark.parametrize(
    ("flood", "status"),
    [
        (b"GET /v2 HTTP/1.1\r\nHost: t\r\nx-flood: ", 431),  # one endless header line
        (b"GET /v2 HTTP/1.1\r\nHost: t\r\n", 431),  # endless headers (20,000 and more)
        (b"GET /", 414),  # an endless URL
        (CHUNKED + b"5;", 413),  # an endless chunk extension
        (CHUNKED + b"2\r\n{}\r\n0\r\nx-trailer: ", 413),  # an endless trailer line
    ],
    ids=["header line", "headers", "URL", "chunk extension", "trailer line"],
)
def test_floods_are_cut_at_the_limit(gateway: GatewayProcess, flood: bytes, status: int) -> None:
    filler = b"a" * 65536 if flood.endswith((b": ", b"/", b";")) else b"x-f: 1\r\n" * 8192
    sent = 0
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(flood)
        try:
            while sent < 8 * 1024 * 1024:  # the gateway refuses far earlier
                sock.sendall(filler)
                sent += len(filler)
        except (BrokenPipeError, ConnectionResetError):
            pass
        responses, was_closed = read_until_closed(sock)
    assert was_closed
    assert [r[0] for r in responses] == [status]
    error_of(responses[0])


def test_a_slow_head_gets_408_and_is_closed(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: t\r\n")
        for i in range(100):  # a header line every 0.3 s: the head never ends
            time.sleep(0.3)
            try:
                sock.sendall(b"x-slow-%d: 1\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                break
            if time.monotonic() - started > 20:
                break
        responses, was_closed = read_until_closed(sock)
    assert was_closed
    assert [r[0] for r in responses] == [408]
    assert "did not arrive" in error_of(responses[0])


def test_a_stalled_body_gets_408_and_is_closed(gateway: GatewayProcess) -> None:
    body = infer_body()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        # a whole request, then one whose body stops halfway: the first is answered, the
        # second refused once nothing has come for the keep-alive, not dropped unanswered
        sock.sendall(GOOD + post(INFER, body)[: -len(body) // 2])
        responses, was_closed = read_until_closed(sock)
    assert was_closed
    assert [r[0] for r in responses] == [200, 408]
    assert "body stopped arriving" in error_of(responses[1])


@pytest.mark.parametrize(
    ("head", "piece"),
    [
        (b"POST " + INFER + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n", b" "),
        (CHUNKED + b"1", b";e=v"),  # chunk extensions, slowly
    ],
    ids=["content-length", "chunk extensions"],
)
def test_a_trickled_body_gets_408_at_its_deadline_and_is_closed(
    gateway: GatewayProcess, head: bytes, piece: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(head)
        give_up = time.monotonic() + 20
        # a piece every 0.3 s, until the gateway answers: never quiet for the keep-alive (1 s)
        while not select.select([sock], [], [], 0.3)[0]:
            assert time.monotonic() < give_up, "the trickle was never cut"
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(piece)
        responses, was_closed = read_until_closed(sock)
    assert was_closed
    assert [r[0] for r in responses] == [408]
    assert error_of(responses[0]) == f"the request body did not arrive within {BODY_TIMEOUT_S} s"


def test_an_idle_connection_is_closed_after_keep_alive(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        assert closed(sock, timeout_s=15)


def test_clients_that_read_nothing_cost_little_and_are_dropped(gateway: GatewayProcess) -> None:
    # Each pipelines 2,000 GET /metrics (68 KB, answers of tens of KB each) and never reads.
    # Before: every request in a read was answered at once, so three such clients held the
    # event loop for 11 s (liveness elsewhere waited that long) and grew the process by 109 MB,
    # and their connections stayed open for good.
    before = rss_bytes(gateway.proc.pid)
    dropped_before = gateway.log().count("read nothing for 2 s")
    pipeline = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n" * 2000
    clients = []
    for _ in range(3):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gateway.port))
        sock.setblocking(False)
        sent, deadline = 0, time.monotonic() + 10
        while sent < len(pipeline) and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(pipeline[sent : sent + 65536])
            if sent < len(pipeline):
                select.select([], [sock], [], 0.1)
        clients.append(sock)
    try:
        live = httpx.get(gateway.url + "/v2/health/live", timeout=5)
        assert live.status_code == 200
        assert rss_bytes(gateway.proc.pid) - before < 40 * 1024 * 1024
        deadline = time.monotonic() + 30  # send_timeout_s is 2
        while gateway.log().count("read nothing for 2 s") < dropped_before + 3:
            assert time.monotonic() < deadline, "a client that reads nothing kept its connection"
            select.select([], [], [], 0.1)
        for sock in clients:  # what it had received, then the end
            sock.setblocking(True)
            assert read_until_closed(sock, timeout_s=10)[1]
    finally:
        for sock in clients:
            sock.close()


def test_a_client_that_reads_gets_every_pipelined_answer(gateway: GatewayProcess) -> None:
    # megabytes of answers to 300 pipelined requests: the connection's writes pause and resume
    # many times as the client reads, and every request is answered, in order
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n" * 300 + GET_LIVE)
        responses = read_responses(sock, 301, timeout_s=60)
    assert [r[0] for r in responses] == [200] * 301
    assert sum(len(r[2]) for r in responses[:300]) > 1024 * 1024
    assert orjson.loads(responses[300][2]) == {"live": True}


def test_header_floods_leave_memory_bounded(gateway: GatewayProcess) -> None:
    before = rss_bytes(gateway.proc.pid)

    def flood() -> None:
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: t\r\nx-flood: ")
            chunk = b"a" * (1 << 20)
            try:
                for _ in range(256):  # 256 MiB, unless refused first
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert httpx.get(f"{gateway.url}/v2/health/live").status_code == 200
    assert rss_bytes(gateway.proc.pid) - before < 32 * 1024 * 1024


def test_the_url_cache_stays_small(gateway: GatewayProcess) -> None:
    before = rss_bytes(gateway.proc.pid)
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        for i in range(4000):  # distinct 8 KiB URLs: 32 MB of keys if they were all kept
            name = b"%d-" % i + b"u" * 8000
            sock.sendall(post(b"/v2/models/" + name + b"/infer", b"{}"))
            ((status, _, _),) = read_responses(sock, 1)
            assert status == 404
    assert rss_bytes(gateway.proc.pid) - before < 16 * 1024 * 1024


# -- early 413 and Expect ---------------------------------------------------------------------


def test_content_length_over_the_limit_is_refused_before_the_body(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST " + INFER + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 1073741824\r\n\r\n"
        )
        responses, was_closed = read_until_closed(sock)  # no byte of the body was sent
    assert was_closed
    assert [r[0] for r in responses] == [413]
    assert "exceeds" in error_of(responses[0])


def test_expect_continue_only_when_the_body_will_be_taken(gateway: GatewayProcess) -> None:
    expect = b"POST " + INFER + b" HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(expect + b"Content-Length: 1073741824\r\n\r\n")
        responses, was_closed = read_until_closed(sock)
    assert was_closed
    assert [r[0] for r in responses] == [413]  # at once, and no 100 Continue
    body = infer_body()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        # a pipelined request first: the 100 Continue must not come before its answer
        sock.sendall(GOOD + expect + b"Content-Length: %d\r\n\r\n" % len(body))
        sock.settimeout(10)
        received = b""
        while received.count(b"HTTP/1.1 ") < 2:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert b"HTTP/1.1 100 Continue\r\n\r\n" in received
        sock.sendall(body)
        ((status, _, _),) = read_responses(sock, 1)
        assert status == 200


# -- strict where laxness is a risk -----------------------------------------------------------


def test_http10_without_host_is_served(gateway: GatewayProcess) -> None:
    responses, was_closed = exchange(gateway, b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    assert was_closed
    assert [r[0] for r in responses] == [200]


def test_an_encoded_slash_is_not_a_separator(gateway: GatewayProcess) -> None:
    versioned = post(b"/v2/models/breast_cancer%2Fversions%2F1/infer", infer_body())
    meta = b"GET /v2/models/breast_cancer%2Fversions%2F1 HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(versioned + meta)
        answers = read_responses(sock, 2)
    assert [r[0] for r in answers] == [404, 404]
    assert "breast_cancer%2Fversions%2F1" in error_of(answers[0])


def test_trailer_fields_are_not_headers(gateway: GatewayProcess) -> None:
    # they were: a trailer "x-model-variant" pinned the request, "content-encoding" decoded it
    body = infer_body()
    chunked = INFER.join(
        (b"POST ", b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    ) + b"%x\r\n%s\r\n0\r\n" % (len(body), body)
    trailers = b"X-Model-Variant: nope\r\nContent-Encoding: gzip\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(chunked + trailers)
        ((status, headers, answer),) = read_responses(sock, 1)
    assert status == 200, answer
    assert headers["x-model-variant"] == "default"
    # they still count against the head's limits
    flood = b"".join(b"x-%d: 1\r\n" % i for i in range(101)) + b"\r\n"
    responses, was_closed = exchange(gateway, chunked + flood)
    assert was_closed
    assert [r[0] for r in responses] == [431]


def test_no_redirect_is_built_from_host(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        ((status, headers, _),) = read_responses(sock, 1)
    assert status == 404
    assert "location" not in headers


def test_405_names_every_allowed_method(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"GET " + INFER + b" HTTP/1.1\r\nHost: t\r\n\r\n"
            b"DELETE /admin/routes/x HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        infer, admin = read_responses(sock, 2)
    assert (infer[0], infer[1]["allow"]) == (405, "POST")
    assert (admin[0], admin[1]["allow"]) == (405, "GET, HEAD, PATCH, PUT")
    error_of(admin)


def test_content_encoding_is_case_insensitive_and_gzip_members_are_read_whole(
    gateway: GatewayProcess,
) -> None:
    body = infer_body()
    half = len(body) // 2
    two_members = gzip.compress(body[:half]) + gzip.compress(body[half:])
    cases = [
        (gzip.compress(body), b"GZip", 200, None),
        (two_members, b"gzip", 200, None),
        (gzip.compress(body) + b"trailing", b"gzip", 400, "follow the end"),
        (gzip.compress(body) + b"\0" * 8, b"gzip", 400, "follow the end"),
        (gzip.compress(body)[:-12], b"gzip", 400, "truncated"),
        (gzip.compress(body), b"br", 400, "unsupported Content-Encoding"),
    ]
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        for payload, coding, status, message in cases:
            sock.sendall(post(INFER, payload, b"Content-Encoding: " + coding + b"\r\n"))
            ((got, _, answer),) = read_responses(sock, 1)
            assert got == status, (coding, answer)
            if message is not None:
                assert message in orjson.loads(answer)["error"]


# -- nothing answers 500 but a failing model ---------------------------------------------------


def test_hostile_inputs_get_4xx_with_the_request_id(gateway: GatewayProcess) -> None:
    deep = infer_body([1.0], shape=[1] * 65)
    cases = [
        (post(INFER, deep), "32 dimensions"),
        (post(INFER, infer_body(), b"Inference-Header-Content-Length: " + b"9" * 5000 + b"\r\n"), "20 digits"),
        (post(INFER, infer_body(["1.5", *ROW.tolist()[1:]])), "str values"),
        (post(INFER, infer_body([True, *ROW.tolist()[1:]])), "bool values"),
        (post(b"/v1/models/breast_cancer:predict", orjson.dumps({"instances": [["1.5"] * 30]})), "not a valid FP32"),
    ]  # fmt: skip
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        for request, message in cases:
            sock.sendall(request)
            ((status, headers, answer),) = read_responses(sock, 1)
            assert status == 400, answer
            assert message in orjson.loads(answer)["error"]
            assert headers["x-request-id"]


def test_an_overlong_registry_ref_is_refused_by_the_admin_api(gateway: GatewayProcess) -> None:
    for ref in ("m" * 5000 + "@champion", "breast_cancer/" + "9" * 5000):
        response = httpx.put(
            f"{gateway.url}/admin/routes/breast_cancer",
            headers={"authorization": f"Bearer {TOKEN}"},
            json={"variants": [{"name": "default", "ref": ref, "weight": 100}]},
        )
        assert response.status_code == 400, response.text
        assert "at most 128 characters" in response.json()["error"]


# -- hypothesis: whatever arrives is answered or closed, never hangs, never 5xx ---------------

_METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"G\0T", b""])
_SEGMENT = st.one_of(
    st.sampled_from([b"v2", b"models", b"breast_cancer", b"infer", b"versions", b"1", b"ready",
                     b"health", b"live", b"admin", b"routes", b"metrics", b"v1", b"%2F", b"%00",
                     b"%ff", b"..", b"", b"breast_cancer:predict", b"http:"]),
    st.binary(max_size=12),
)  # fmt: skip
_PATH = st.lists(_SEGMENT, max_size=6).map(lambda parts: b"/" + b"/".join(parts))
_VERSION = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b""])
_HEADER = st.tuples(
    st.sampled_from([b"Host", b"Content-Type", b"Content-Encoding", b"Expect", b"Transfer-Encoding",
                     b"Inference-Header-Content-Length", b"Authorization", b"x-routing-key",
                     b"x-model-variant", b"Connection", b"X-Junk"]),
    st.binary(max_size=40),
)  # fmt: skip
_BODY = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    st.sampled_from([infer_body(), infer_body([True] * 30), infer_body([1.0], shape=[1] * 40),
                     b'{"instances": [[1.0, "2"]]}', b'{"inputs": [{"name": "input"}]}']),
)  # fmt: skip


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:  # now and then, raw noise
        return draw(st.binary(min_size=1, max_size=300))
    body = draw(_BODY)
    lines = [draw(_METHODS) + b" " + draw(_PATH) + b" " + draw(_VERSION)]
    if draw(st.booleans()):
        lines.append(b"Host: t")
    lines += [name + b": " + value for name, value in draw(st.lists(_HEADER, max_size=5))]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@settings(
    max_examples=200,
    deadline=None,
    database=None,  # no example files in the clone
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pipeline=st.lists(_requests(), min_size=1, max_size=4))
def test_any_pipeline_is_answered_or_closed_never_5xx(
    gateway: GatewayProcess, pipeline: list[bytes]
) -> None:
    last = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"".join(pipeline) + last)
        # every request here is complete or hopeless: the gateway answers it (and closes after
        # the last), refuses it, or ends an unfinished head or body within the head timeout
        # or the keep-alive
        responses, was_closed = read_until_closed(sock, timeout_s=15)
    assert was_closed, f"left hanging after {[r[0] for r in responses]}"
    for response in responses:
        # 501 and 505 are the protocol's own answers (a transfer coding, an HTTP version)
        assert response[0] < 500 or response[0] in (501, 505), response
        if response[0] >= 400:
            error_of(response)
