"""An open-loop HTTP load generator: requests leave on a fixed schedule, whatever the answers.

Latency is measured from each request's *scheduled* send time to the end of its answer, so a
server that falls behind shows its queueing in the numbers instead of slowing the generator
down (no coordinated omission). So that a generator that falls behind is not mistaken for a
slow server, each request's *send lag* is kept too: when it was written to its socket, less its
scheduled time (a saturated generator writes late, and reads answers late). Connections are
HTTP/1.1 keep-alive asyncio protocols, one request in flight on each (far cheaper per request
than an HTTP client library or streams); a request that finds every connection busy opens
another, up to ``max_connections``, then waits, and that wait counts in its latency.

``python -m loadtests.openloop --url URL --body-file F --rate 500 --duration 5`` prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

__all__ = ["Result", "Sample", "find_max_rate", "run", "run_async", "run_phases_async"]

# One request: its scheduled time (seconds from the schedule's start); its latency from then
# to the end of its answer (None: no answer); the HTTP status or the error's name; its send
# lag (when it was written, less its scheduled time; None: never written); the port of the
# connection it was sent on (0: none).
Sample = tuple[float, float | None, str, float | None, int]
# time.perf_counter on Linux: the machine's monotonic clock, comparable across processes.
_clock = time.perf_counter


@dataclass
class Result:
    """What one run measured."""

    offered_rate: float
    duration_s: float
    sent: int = 0
    completed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    # Of each answered request: when it was written, less its scheduled time.
    send_lags_s: list[float] = field(default_factory=list)
    # With ``keep_samples``: every request as a ``Sample``.
    samples: list[Sample] | None = None
    # The schedule's start (``time.perf_counter``): the samples' offsets are from it.
    begin: float = 0.0
    # With ``keep_samples``: the scheduled offsets of the requests that found every connection
    # busy and waited in the generator for one (that wait is in their send lag).
    waited: list[float] | None = None

    @property
    def achieved_rate(self) -> float:
        return self.completed / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("inf")
        return float(np.percentile(np.asarray(self.latencies_s), q)) * 1000

    def send_lag_ms(self, q: float) -> float | None:
        if not self.send_lags_s:
            return None
        return round(float(np.percentile(np.asarray(self.send_lags_s), q)) * 1000, 3)

    @property
    def failed(self) -> int:
        bad = sum(n for code, n in self.statuses.items() if not code.startswith("2"))
        return bad + sum(self.errors.values())

    def summary(self) -> dict[str, object]:
        """The run without its raw latencies."""
        return {
            "offered_rate": self.offered_rate,
            "achieved_rate": round(self.achieved_rate, 1),
            "sent": self.sent,
            "completed": self.completed,
            "failed": self.failed,
            "statuses": self.statuses,
            "errors": self.errors,
            **{f"p{q}_ms": round(self.percentile_ms(q), 3) for q in (50, 90, 99, 99.9)},
            "max_ms": round(max(self.latencies_s, default=float("inf")) * 1000, 3),
            "send_lag_p50_ms": self.send_lag_ms(50),
            "send_lag_p99_ms": self.send_lag_ms(99),
        }

    def merge(self, other: Result) -> None:
        self.sent += other.sent
        self.completed += other.completed
        self.latencies_s.extend(other.latencies_s)
        self.send_lags_s.extend(other.send_lags_s)
        for mine, theirs in ((self.statuses, other.statuses), (self.errors, other.errors)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n


class _Client(asyncio.Protocol):
    """One keep-alive connection: at most one request in flight (no pipelining)."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scheduled: float | None = None  # the request in flight: its scheduled send time
        self.sent = 0.0  # and when it was written
        self.port = 0  # this end's port: the server sees it as the client's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        address = transport.get_extra_info("sockname")
        if isinstance(address, tuple) and len(address) >= 2:
            self.port = address[1]

    def send(self, scheduled: float) -> None:
        assert self.transport is not None
        self.scheduled = scheduled
        self.sent = _clock()
        self.transport.write(self.pool.payload)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            size = end + 4 + int(head[at + 17 : stop if stop >= 0 else None])
        elif b"transfer-encoding: chunked" in head:
            last = self.buffer.find(b"0\r\n\r\n", end + 4)
            size = last + 5 if last >= 0 else len(self.buffer) + 1
        else:
            size = end + 4
        if len(self.buffer) < size:
            return
        status = self.buffer[9:12].decode()
        del self.buffer[:size]
        scheduled, self.scheduled = self.scheduled, None
        if scheduled is not None:
            self.pool.answered(self, scheduled, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self, self.scheduled, exc)
        self.scheduled = None


class _Pool:
    """Keep-alive connections; a request that finds them all busy opens another (up to
    ``max_connections``) or waits for one, and that wait counts in its latency."""

    def __init__(
        self,
        host: str,
        port: int,
        payload: bytes,
        max_connections: int,
        result: Result,
        begin: float = 0.0,
    ) -> None:
        self.host, self.port, self.payload = host, port, payload
        self.begin = begin  # the schedule's start, for the samples' offsets
        self.max_connections = max_connections
        self.result = result
        self.idle: list[_Client] = []
        self.busy: set[_Client] = set()
        self.opening = 0
        self.waiting: deque[float] = deque()
        self.outstanding = 0
        self.finished = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, scheduled: float) -> None:
        self.outstanding += 1
        self.finished.clear()
        if self.idle:
            client = self.idle.pop()
            self.busy.add(client)
            client.send(scheduled)
        elif len(self.busy) + self.opening < self.max_connections:
            self.opening += 1
            task = asyncio.get_running_loop().create_task(self._open(scheduled))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.waiting.append(scheduled)
            if self.result.waited is not None:
                self.result.waited.append(scheduled - self.begin)

    async def _open(self, scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, client = await loop.create_connection(lambda: _Client(self), self.host, self.port)
        except OSError as exc:
            self.opening -= 1
            self._fail(type(exc).__name__, scheduled)
            return
        self.opening -= 1
        self.busy.add(client)
        client.send(scheduled)

    def answered(self, client: _Client, scheduled: float, status: str) -> None:
        result = self.result
        latency = _clock() - scheduled
        send_lag = client.sent - scheduled
        result.latencies_s.append(latency)
        result.send_lags_s.append(send_lag)
        result.completed += 1
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if result.samples is not None:
            result.samples.append((scheduled - self.begin, latency, status, send_lag, client.port))
        self._settle()
        if self.waiting:
            client.send(self.waiting.popleft())
        else:
            self.busy.discard(client)
            self.idle.append(client)

    def lost(self, client: _Client, scheduled: float | None, exc: Exception | None) -> None:
        self.busy.discard(client)
        if client in self.idle:
            self.idle.remove(client)
        if scheduled is not None:
            name = type(exc).__name__ if exc is not None else "ConnectionClosed"
            self._fail(name, scheduled, client)

    def _fail(self, name: str, scheduled: float, client: _Client | None = None) -> None:
        """Count a request that got no answer (``client``: the connection it was sent on)."""
        result = self.result
        result.errors[name] = result.errors.get(name, 0) + 1
        if result.samples is not None:
            sent = (None, 0) if client is None else (client.sent - scheduled, client.port)
            result.samples.append((scheduled - self.begin, None, name, *sent))
        self._settle()

    def _settle(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.finished.set()

    def expire(self, timeout_s: float) -> None:
        """Count requests older than ``timeout_s`` as timeouts (their connections close)."""
        limit = time.perf_counter() - timeout_s
        for client in list(self.busy):
            if client.scheduled is not None and client.scheduled < limit:
                scheduled, client.scheduled = client.scheduled, None
                self._fail("TimeoutError", scheduled, client)
                if client.transport is not None:
                    client.transport.close()
        while self.waiting and self.waiting[0] < limit:
            self._fail("TimeoutError", self.waiting.popleft())

    def close(self) -> None:
        for client in self.idle + list(self.busy):
            if client.transport is not None:
                client.transport.close()


async def run_async(
    url: str,
    body: bytes,
    rate: float,
    duration_s: float,
    headers: dict[str, str] | None = None,
    max_connections: int = 512,
    timeout_s: float = 5.0,
    start_at: float | None = None,
) -> Result:
    """Send ``rate`` requests per second for ``duration_s`` seconds; collect what came back.

    Connections are asyncio protocols and a request costs no task: the generator's own CPU
    per request stays far below any server's (its ceiling is measured against ``hello-raw``).
    """
    return await run_phases_async(
        url, body, [(rate, duration_s)], headers, max_connections, timeout_s, start_at
    )


async def run_phases_async(
    url: str,
    body: bytes,
    phases: list[tuple[float, float]],
    headers: dict[str, str] | None = None,
    max_connections: int = 512,
    timeout_s: float = 5.0,
    start_at: float | None = None,
    keep_samples: bool = False,
) -> Result:
    """One open-loop schedule of consecutive ``(rate, duration_s)`` phases, e.g. calm,
    overload, calm again; with ``keep_samples`` every request's time, latency and outcome."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}",
            f"Content-Length: {len(body)}", "Content-Type: application/json"]  # fmt: skip
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    payload = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    duration_s = sum(seconds for _, seconds in phases)
    sent = sum(int(rate * seconds) for rate, seconds in phases)
    offered = phases[0][0] if len(phases) == 1 else sent / duration_s if duration_s else 0.0
    result = Result(offered_rate=offered, duration_s=duration_s)
    if keep_samples:
        result.samples, result.waited = [], []
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds
    begin = start_at if start_at is not None else time.perf_counter() + 0.05
    result.begin = begin
    pool = _Pool(host, port, payload, max_connections, result, begin)
    next_expiry = begin + 0.1
    schedule = [
        phase_start + i / rate
        for phase_start, (rate, seconds) in zip(_starts(begin, phases), phases, strict=True)
        for i in range(int(rate * seconds))
    ]
    for scheduled in schedule:
        now = time.perf_counter()
        if scheduled - now > 0.0005:
            await asyncio.sleep(scheduled - now)
            now = time.perf_counter()
        pool.submit(scheduled)
        result.sent += 1
        if now > next_expiry:
            pool.expire(timeout_s)
            next_expiry = now + 0.1
    while pool.outstanding:
        try:
            async with asyncio.timeout(0.1):
                await pool.finished.wait()
        except TimeoutError:
            pool.expire(timeout_s)
    pool.close()
    return result


def _starts(begin: float, phases: list[tuple[float, float]]) -> list[float]:
    starts = []
    for _, seconds in phases:
        starts.append(begin)
        begin += seconds
    return starts


def _worker(args: tuple[str, bytes, float, float, dict[str, str], float, int]) -> Result:
    url, body, rate, duration_s, headers, offset_s, max_connections = args
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop ships with the gateway
        pass

    async def go() -> Result:
        start = time.perf_counter() + 0.2 + offset_s
        return await run_async(
            url, body, rate, duration_s, headers, max_connections, start_at=start
        )

    return asyncio.run(go())


def run(
    url: str,
    body: bytes,
    rate: float,
    duration_s: float,
    headers: dict[str, str] | None = None,
    processes: int = 1,
    max_connections: int = 512,
) -> Result:
    """One open-loop run, spread over ``processes`` generator processes (schedules interleave)."""
    share = rate / processes
    jobs = [
        (url, body, share, duration_s, headers or {}, i / rate, max_connections // processes)
        for i in range(processes)
    ]
    if processes == 1:
        results = [_worker(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            results = pool.map(_worker, jobs)
    merged = Result(offered_rate=rate, duration_s=duration_s)
    for part in results:
        merged.merge(part)
    return merged


def _acceptable(result: Result, p99_bound_ms: float) -> bool:
    return (
        result.failed == 0
        and result.completed >= 0.99 * result.sent
        and result.percentile_ms(99) <= p99_bound_ms
    )


def find_max_rate(
    url: str,
    body: bytes,
    p99_bound_ms: float = 50.0,
    start_rate: float = 200.0,
    step_s: float = 4.0,
    processes: int = 1,
    precision: float = 0.05,
    max_rate: float = 100_000.0,
    headers: dict[str, str] | None = None,
) -> tuple[float, list[dict[str, object]]]:
    """The highest rate whose p99 stays within the bound with no failures: doubling, then
    bisection to ``precision``; a failed step is tried twice. Returns the rate and every
    step's summary."""
    steps: list[dict[str, object]] = []

    def probe(rate: float) -> bool:
        # A step that fails is run once more: on a shared machine one stray pause can push a
        # p99 over the bound. A rate fails only when both runs fail it.
        for _ in range(2):
            result = run(url, body, rate, step_s, headers, processes)
            ok = _acceptable(result, p99_bound_ms)
            steps.append({**result.summary(), "ok": ok})
            time.sleep(0.5)  # let the server drain before the next step
            if ok:
                return True
        return False

    good, bad = 0.0, None
    rate = start_rate
    while bad is None and rate <= max_rate:
        if probe(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
    if bad is None:
        return good, steps
    while bad - good > precision * bad:
        middle = (good + bad) / 2
        if probe(middle):
            good = middle
        else:
            bad = middle
    return good, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--find-max", action="store_true", help="search the max rate at p99<=bound")
    parser.add_argument("--p99-bound-ms", type=float, default=50)
    args = parser.parse_args()
    body = open(args.body_file, "rb").read()  # noqa: SIM115
    if args.find_max:
        rate, steps = find_max_rate(args.url, body, args.p99_bound_ms, processes=args.processes)
        print(json.dumps({"max_rate": rate, "steps": steps}, indent=2))
    else:
        result = run(args.url, body, args.rate, args.duration, processes=args.processes)
        print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()
