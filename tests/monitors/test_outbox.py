from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from monitors.outbox import Outbox
from monitors.webhooks import Webhooks, WebhookTarget


@contextmanager
def receiver(delay_s: float) -> Iterator[tuple[str, list[str]]]:
    """A loopback webhook receiver that answers 200 after ``delay_s``; yields (url, ids)."""
    ids: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            time.sleep(delay_s)
            ids.append(self.headers["idempotency-key"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", ids
    finally:
        server.shutdown()
        server.server_close()


async def test_a_slow_receiver_does_not_hold_up_the_caller() -> None:
    with receiver(delay_s=0.3) as (url, ids):
        webhooks = Webhooks([WebhookTarget("t", url, "s")], timeout_s=5)
        outbox = Outbox(webhooks, max_queued=1)
        async with outbox:
            for n in range(3):
                outbox.add(0, f"e{n}", b"{}")
            started = time.monotonic()
            outbox.dispatch()  # one fits in the queue; the others wait in the outbox
            assert time.monotonic() - started < 0.05
            assert outbox.pending(0).keys() == {"e0", "e1", "e2"}
            deadline = time.monotonic() + 10
            while outbox.size and time.monotonic() < deadline:
                outbox.dispatch()
                await asyncio.sleep(0.05)
        await webhooks.aclose()
    assert sorted(ids) == ["e0", "e1", "e2"], "each event delivered once"
    assert outbox.size == 0


async def test_stop_delivers_what_is_queued_within_its_deadline() -> None:
    with receiver(delay_s=0.1) as (url, ids):
        webhooks = Webhooks([WebhookTarget("t", url, "s")], timeout_s=5)
        outbox = Outbox(webhooks)
        outbox.start()
        outbox.add(2, "e", b"{}")
        outbox.dispatch()
        await outbox.stop(drain_timeout_s=5)
        await outbox.stop()  # twice is fine
        await webhooks.aclose()
    assert ids == ["e"]
    assert outbox.pending(2) == {}


def test_pending_events_travel_with_the_partition() -> None:
    outbox = Outbox(Webhooks([], timeout_s=1))
    outbox.add(1, "a", b'{"x": 1}')
    outbox.add(2, "b", b"{}")
    saved = outbox.pending(1)
    outbox.forget(1)  # revoked: its next owner delivers "a" from the snapshot
    assert outbox.pending(1) == {}
    assert outbox.size == 1
    other = Outbox(Webhooks([], timeout_s=1))
    other.restore(1, saved)
    assert other.pending(1) == {"a": '{"x": 1}'}
