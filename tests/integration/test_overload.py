"""End-to-end: admission control and the health path of the real ``gateway serve`` process.

Overload is provoked deterministically (a limit of one request in flight and a batch that
waits for company), never by outrunning the machine.
"""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests._raw_http import post, read_responses, read_until_closed
from tests._support import GatewayProcess, start_gateway
from tests.integration.test_http_protocol import PATH, ROWS, body

pytestmark = pytest.mark.e2e


def config(registry: Path, **extra: object) -> dict[str, object]:
    return {
        "registry": {"backend": "local", "root": str(registry), "poll_interval_s": 60},
        "models": [{"name": "breast_cancer", "ref": "breast_cancer@champion"}],
        **extra,
    }


def metric(gw: GatewayProcess, prefix: str) -> str:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    return next((line for line in text.splitlines() if line.startswith(prefix)), "")


def wait_metric(gw: GatewayProcess, line: str, timeout_s: float = 20.0) -> None:
    prefix = line.rsplit(" ", 1)[0]
    deadline = time.monotonic() + timeout_s
    while (seen := metric(gw, prefix)) != line:
        assert time.monotonic() < deadline, f"{line!r} never appeared; last {seen!r}"
        time.sleep(0.05)


def pending(sock: socket.socket) -> bool:
    """Whether anything has come back on the socket yet (without waiting)."""
    return bool(select.select([sock], [], [], 0)[0])


def test_overload_is_refused_at_once_and_probes_are_answered_ahead_of_the_backlog(
    demo_registry: Path, tmp_path: Path
) -> None:
    settings = config(
        demo_registry,
        admission={"limits": {"mode": "fixed", "max_in_flight": 1}},
        # a single row waits in its batch until a second fills it (or 60 s pass)
        batching={"max_batch_size": 2, "max_batch_delay_s": 60, "close_when_idle": False,
                  "timeout_s": 120},
    )  # fmt: skip
    in_flight = 'gateway_admission_in_flight{model="breast_cancer"}'
    with start_gateway(tmp_path, settings) as gw:
        waiting = socket.create_connection(("127.0.0.1", gw.port))
        waiting.sendall(post(PATH, body()))
        wait_metric(gw, f"{in_flight} 1.0")
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            # not even a valid body: a refusal parses nothing
            sock.sendall(post(PATH, b"{not json") + post(PATH, body()))
            (status, headers, payload), (second, _, _) = read_responses(sock, 2)
        assert (status, second) == (503, 503)
        assert headers["retry-after"] == "1"
        assert b"in flight are at the limit" in payload
        assert not pending(waiting), "the queued request is still waiting"
        for path in (b"/v2/health/live", b"/v2/health/ready", b"/metrics"):
            with socket.create_connection(("127.0.0.1", gw.port)) as sock:
                sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n")
                ((status, _, _),) = read_responses(sock, 1)
            assert status == 200, path
        assert not pending(waiting)
        refusals = 'gateway_admission_refusals_total{model="breast_cancer",reason="endpoint_limit"}'
        assert metric(gw, refusals) == f"{refusals} 2.0"
        assert metric(gw, "gateway_requests_total{") == "", "refusals leave no request record"
        waiting.close()  # the caller gives up: its request leaves the batch, its place is free
        wait_metric(gw, f"{in_flight} 0.0")
        two_rows = {"name": "input", "shape": [2, 30], "datatype": "FP32",
                    "data": ROWS[:2].ravel().tolist()}  # fmt: skip
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(post(PATH, orjson.dumps({"inputs": [two_rows]})))  # fills the batch
            ((status, _, payload),) = read_responses(sock, 1)
        assert status == 200, payload


def test_a_request_whose_deadline_passed_before_it_was_read_is_dropped_unparsed(
    demo_registry: Path, tmp_path: Path
) -> None:
    settings = config(demo_registry, batching={"timeout_s": 0.3})
    with start_gateway(tmp_path, settings) as gw:
        invalid = b"{not json"
        request = post(PATH, invalid)
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(request[:20])  # its first bytes: its deadline counts from here
            time.sleep(0.6)  # a slow sender: the deadline passes before the request is whole
            sock.sendall(request[20:])
            ((status, _, payload),) = read_responses(sock, 1)
        assert status == 503
        assert b"deadline passed before it was read" in payload
        timeouts = 'gateway_requests_total{model="breast_cancer",outcome="timeout",'
        assert metric(gw, timeouts).endswith(" 1.0")
        no_batch = 'gateway_batch_rows_count{model="breast_cancer",variant="default",version="1"}'
        assert metric(gw, no_batch) == f"{no_batch} 0.0", "the model never ran"


def test_a_large_or_expecting_request_is_refused_from_its_head_unread(
    demo_registry: Path, tmp_path: Path
) -> None:
    # one request per 1,000 s per caller, a burst of one: the caller's second request is refused
    settings = config(
        demo_registry,
        admission={"limits": {"client_rate_per_s": 0.001, "client_burst": 1}},
    )
    key = b"X-Api-Key: k\r\n"
    large = 1024 * 1024
    with start_gateway(tmp_path, settings) as gw:
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(post(PATH, body(), key))  # takes the caller's one token
            ((status, _, _),) = read_responses(sock, 1)
        assert status == 200
        head = b"POST " + PATH + b" HTTP/1.1\r\nHost: k\r\n" + key
        # Expect: 100-continue: the refusal comes instead of the 100 Continue, and the
        # connection closes (the client need not send the body)
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(head + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % large)
            responses, was_closed = read_until_closed(sock)
        assert [r[0] for r in responses] == [429]
        assert was_closed
        assert responses[0][1]["retry-after"] == "1000"
        # a large body: refused once its head is in, whatever of the body has been sent
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(head + b"Content-Length: %d\r\n\r\n" % large + b"x" * 1000)
            responses, was_closed = read_until_closed(sock)
        assert [r[0] for r in responses] == [429]
        assert was_closed
        assert b"exceeds its rate" in responses[0][2]
        # a small body is refused once whole, and the connection stays open
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(post(PATH, body(), key) + post(PATH, body(), key))
            assert [r[0] for r in read_responses(sock, 2)] == [429, 429]
        refusals = 'gateway_admission_refusals_total{model="breast_cancer",reason="client_rate"}'
        assert metric(gw, refusals) == f"{refusals} 4.0"


def test_a_request_checked_from_its_head_takes_one_token_of_its_caller(
    demo_registry: Path, tmp_path: Path
) -> None:
    """The early check of a large or expecting request's head is only a check: a caller with
    a burst of one still gets its one request through. (The check used to take a token, and the
    whole request then another, so that request was refused 429 after its body was read.)"""
    settings = config(
        demo_registry,
        admission={"limits": {"client_rate_per_s": 0.001, "client_burst": 1}},
    )
    head = b"POST " + PATH + b" HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\n"
    large = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [300, 30], "datatype": "FP32",
                     "data": np.tile(ROWS[0], 300).tolist()}]}
    )  # fmt: skip
    assert len(large) > 64 * 1024
    with start_gateway(tmp_path, settings) as gw:
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(head + b"X-Api-Key: a\r\nExpect: 100-continue\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body()))  # fmt: skip
            sock.settimeout(10)
            assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(body())
            ((status, _, payload),) = read_responses(sock, 1)
        assert status == 200, payload
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(post(PATH, large, b"X-Api-Key: b\r\n"))
            ((status, _, payload),) = read_responses(sock, 1)
        assert status == 200, payload
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(post(PATH, large, b"X-Api-Key: b\r\n"))  # its second: over its rate
            responses, _ = read_until_closed(sock)
        assert [r[0] for r in responses] == [429]
        refusals = 'gateway_admission_refusals_total{model="breast_cancer",reason="client_rate"}'
        assert metric(gw, refusals) == f"{refusals} 1.0"
        wait_metric(gw, 'gateway_admission_in_flight{model="breast_cancer"} 0.0')


@pytest.mark.parametrize("protocol", ["gateway", "uvicorn"])
def test_a_body_still_being_sent_holds_no_place(
    demo_registry: Path, tmp_path: Path, protocol: str
) -> None:
    """A place is for the model's work: a caller that sends its body slowly holds none, so
    such callers cannot take an endpoint's whole limit. (Behind an ASGI server, the place was
    taken before the body was read.)"""
    settings = config(
        demo_registry,
        server={"http_protocol": protocol},
        admission={"limits": {"mode": "fixed", "max_in_flight": 1}},
    )
    whole = post(PATH, body())
    with start_gateway(tmp_path, settings) as gw:
        with socket.create_connection(("127.0.0.1", gw.port)) as slow:
            slow.sendall(whole[:-10])  # its head and most of its body
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", gw.port)) as sock:
                    sock.sendall(whole)
                    ((status, _, payload),) = read_responses(sock, 1)
                assert status == 200, payload
            slow.sendall(whole[-10:])
            ((status, _, payload),) = read_responses(slow, 1)
            assert status == 200, payload
        wait_metric(gw, 'gateway_admission_in_flight{model="breast_cancer"} 0.0')


def test_calls_read_together_are_parsed_in_later_turns_and_every_one_is_answered(
    demo_registry: Path, tmp_path: Path
) -> None:
    """With a slice too short for more than one call a pass, the calls a pass reads together
    wait for later passes (``admission.pass_slice_s``): each is still answered, with its own
    row's answer; callers that leave meanwhile give their places back."""
    settings = config(demo_registry, admission={"pass_slice_s": 1e-6})
    deferred = "gateway_admission_deferred_total "
    with start_gateway(tmp_path, settings) as gw:
        expected = []
        for row in range(len(ROWS)):
            with socket.create_connection(("127.0.0.1", gw.port)) as sock:
                sock.sendall(post(PATH, body(row)))
                ((status, _, payload),) = read_responses(sock, 1)
            assert status == 200, payload
            expected.append(orjson.loads(payload)["outputs"])
        assert metric(gw, deferred) == f"{deferred}0.0", "one call at a time never waits"
        for burst in range(50):  # until a pass has read several calls together
            socks = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(24)]
            requests = [post(PATH, body(i % len(ROWS))) for i in range(len(socks))]
            for sock, request in zip(socks, requests, strict=True):
                sock.sendall(request)
            leaving = socks[::4]  # a quarter of the callers give up at once
            for sock in leaving:
                sock.close()
            for i, sock in enumerate(socks):
                if sock in leaving:
                    continue
                ((status, _, payload),) = read_responses(sock, 1)
                assert status == 200, payload
                outputs = orjson.loads(payload)["outputs"]
                assert outputs == expected[i % len(ROWS)], f"call {i} of burst {burst}"
                sock.close()
            if float(metric(gw, deferred).split()[-1]) > 0:
                break
        else:
            raise AssertionError("no pass of 50 bursts read two calls together")
        wait_metric(gw, 'gateway_admission_in_flight{model="breast_cancer"} 0.0')
        assert metric(gw, "gateway_admission_waiting_turn ") == "gateway_admission_waiting_turn 0.0"


def test_a_burst_at_an_idle_gateway_is_admitted_whole_by_the_default_limit(
    demo_registry: Path, tmp_path: Path
) -> None:
    """What arrives at once after a quiet spell (a pause of the loop or of the CPU, a client
    starting up) is work the gateway can do: the default adaptive limit starts above such a
    burst, so none of it is refused. It used to start at 32. (The queue-delay target is
    raised so that, on a busy machine, a pause of this process cannot make the queue look
    standing: the in-flight limit's start is what is checked.)"""
    settings = config(demo_registry, admission={"limits": {"queue_delay_target_s": 1.0}})
    with start_gateway(tmp_path, settings) as gw:
        socks = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(100)]
        try:
            for i, sock in enumerate(socks):
                sock.sendall(post(PATH, body(i % len(ROWS))))
            statuses = [read_responses(sock, 1)[0][0] for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        assert statuses == [200] * len(socks)
        refusals = 'gateway_admission_refusals_total{model="breast_cancer",reason="endpoint_limit"}'
        assert metric(gw, refusals) == f"{refusals} 0.0"
