"""The request-head rules the gateway's protocol applies (gateway/http/_limits.py, _paths.py)."""

from __future__ import annotations

import pytest

from gateway.http._limits import (
    MAX_FRAMING_BYTES,
    HeadError,
    HeadMeter,
    HttpLimits,
    check_framing,
    check_head,
)
from gateway.http._paths import decode_path

LIMITS = HttpLimits(max_url_bytes=100, max_header_bytes=200, max_headers=3)


def refused(call: object, *args: object) -> tuple[int, str]:
    with pytest.raises(HeadError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.status, caught.value.message


def test_the_meter_refuses_past_each_limit() -> None:
    meter = HeadMeter(LIMITS)
    meter.url(60)
    assert refused(meter.url, 41)[0] == 414
    meter.reset()
    for _ in range(3):
        meter.header(10)
    assert refused(meter.header, 10) == (431, "the request has more than 3 headers")
    meter.reset()
    meter.header(150)
    assert refused(meter.header, 50)[0] == 431  # 154 + 54 bytes with separators
    meter.reset()
    meter.read(1000)  # reads inside the head count the request line too
    assert refused(meter.read, 400) == (431, "the request header block exceeds 200 bytes")


@pytest.mark.parametrize(
    ("version", "headers", "status"),
    [
        ("0.9", [], 400),
        ("2.0", [(b"host", b"t")], 505),
        ("1.2", [(b"host", b"t")], 505),
        ("1.1", [], 400),
        ("1.1", [(b"host", b"a"), (b"host", b"b")], 400),
        ("1.1", [(b"host", b"t"), (b"transfer-encoding", b"gzip, chunked")], 501),
        ("1.1", [(b"host", b"t"), (b"content-length", b"1001")], 413),
        ("1.1", [(b"host", b"t"), (b"content-length", b"9" * 5000)], 413),
        ("1.1", [(b"host", b"t"), (b"expect", b"magic")], 417),
    ],
)
def test_check_head_refuses(version: str, headers: list[tuple[bytes, bytes]], status: int) -> None:
    assert refused(check_head, version, headers, 1000)[0] == status


def test_check_head_takes_what_is_fine_and_says_when_to_send_100() -> None:
    host = (b"host", b"t")
    assert check_head("1.0", [], 1000) is False
    assert check_head("1.1", [host, (b"transfer-encoding", b"Chunked")], 1000) is False
    assert check_head("1.1", [host, (b"expect", b"100-Continue")], 1000) is True
    assert check_head("1.0", [(b"expect", b"100-continue")], 1000) is False


def test_check_framing_counts_only_what_the_data_does_not_pay_for() -> None:
    assert check_framing(0, 4096, 4096, 0) == 0  # a Content-Length body's read: all data
    assert check_framing(0, 4096, 0, 0) == 4096  # an extension's bytes, all of them
    assert check_framing(100, 170, 10, 2) == 100 + 170 - 3 * 10 - 16 * 2
    # a large chunk's data pays its own framing, but banks nothing for later extensions
    assert check_framing(5000, 65536, 65000, 1) == 0
    assert check_framing(MAX_FRAMING_BYTES - 10, 10, 0, 0) == MAX_FRAMING_BYTES
    status, message = refused(check_framing, MAX_FRAMING_BYTES, 1, 0, 0)
    assert status == 413
    assert message.startswith("the chunked body's framing")


def test_an_encoded_slash_stays_encoded() -> None:
    assert decode_path(b"/v2/models/a%2Fb/infer") == "/v2/models/a%2Fb/infer"
    assert decode_path(b"/v2/models/a%2fb%20c") == "/v2/models/a%2Fb c"
    assert decode_path(b"/v2/models/plain") == "/v2/models/plain"
