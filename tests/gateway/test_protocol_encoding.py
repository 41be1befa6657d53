"""Request bodies' Content-Encoding (gateway/protocol/encoding.py)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from gateway.errors import InvalidInputError, PayloadTooLargeError
from gateway.protocol import decode_body

BODY = b'{"inputs": []}' * 10


def decode(body: bytes, coding: bytes, limit: int = 10_000) -> bytes:
    return decode_body(body, [(b"content-encoding", coding)], limit)


def test_coding_names_are_case_insensitive() -> None:
    assert decode(gzip.compress(BODY), b"GZIP") == BODY
    assert decode(gzip.compress(BODY), b" x-gzip ") == BODY
    assert decode(zlib.compress(BODY), b"Deflate") == BODY
    assert decode(BODY, b"Identity") == BODY


def test_every_gzip_member_is_read() -> None:
    members = b"".join(gzip.compress(BODY[i : i + 30]) for i in range(0, len(BODY), 30))
    assert decode(members, b"gzip") == BODY


@pytest.mark.parametrize(
    ("body", "coding", "message"),
    [
        (gzip.compress(BODY) + b"junk", b"gzip", "4 bytes follow the end"),
        (gzip.compress(BODY) + b"\0\0", b"gzip", "follow the end"),
        (zlib.compress(BODY) + zlib.compress(BODY), b"deflate", "follow the end"),
        (gzip.compress(BODY)[:-8], b"gzip", "truncated"),
        (b"", b"gzip", "truncated"),
        (b"not gzip", b"gzip", "not valid gzip"),
        (gzip.compress(BODY) * 65, b"gzip", "more than 64 members"),
        (BODY, b"br", "unsupported Content-Encoding 'br'"),
    ],
)
def test_bad_bodies_are_refused(body: bytes, coding: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        decode(body, coding, limit=100_000)


def test_the_header_given_twice_is_one_list() -> None:
    # two codings stacked, whether in one header or two: the same refusal either way
    twice = gzip.compress(gzip.compress(BODY))
    for headers in ([(b"content-encoding", b"gzip, gzip")],
                    [(b"content-encoding", b"gzip"), (b"content-encoding", b"gzip")]):  # fmt: skip
        with pytest.raises(InvalidInputError, match="unsupported Content-Encoding 'gzip, gzip'"):
            decode_body(twice, headers, 100_000)


def test_the_limit_holds_across_members() -> None:
    with pytest.raises(PayloadTooLargeError):
        decode(gzip.compress(BODY) * 2, b"gzip", limit=len(BODY) + 10)
