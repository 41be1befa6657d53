"""The supervisor of ``gateway serve --workers N``: it binds the port once, starts N worker
processes that accept on that one socket, restarts a worker that ends unexpectedly, and on
SIGTERM or SIGINT asks every worker to drain and waits for them.

Workers are spawned (not forked: onnxruntime and the event loop do not survive a fork), each
with its own batchers, feature-log producer, spool directory and replica id. The supervisor
serves no requests itself; it answers the workers over their links (``_hub``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path

from gateway.errors import ConfigError
from gateway.http import bind_health
from gateway.http.accept import bind_main
from gateway.serve import check_before_start
from gateway.settings import GatewaySettings
from gateway.workers._hub import Hub
from gateway.workers._link import Link
from gateway.workers.worker import run_worker, worker_settings

__all__ = ["supervise", "usable_cores", "worker_count"]

log = logging.getLogger(__name__)

# A worker that ends this many times in a row before it ever served stops the server: that is
# a broken configuration or environment, not a crash to ride out.
_MAX_EARLY_EXITS = 5
_HEALTHY_S = 30.0  # a worker that served this long before ending is restarted at once


def usable_cores() -> int:
    """CPUs this process may run on: its affinity, bounded by a cgroup CPU quota if any."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 CPU controller here: the affinity is the bound
    return cores


def worker_count(workers: int | str) -> int:
    """``server.workers`` as a number (``auto``: usable cores)."""
    return usable_cores() if workers == "auto" else int(workers)


def supervise(settings: GatewaySettings, workers: int, log_level: str = "info") -> int:
    """Run ``workers`` worker processes on one port until SIGTERM/SIGINT; the exit status."""
    try:
        check_before_start(settings)
        listener = bind_main(settings.server.host, settings.server.port, 2048)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    listener.set_inheritable(True)
    health: socket.socket | None = None
    if settings.server.health_port is not None:
        try:
            health = bind_health(settings.server.host, settings.server.health_port)
        except ConfigError as exc:
            listener.close()
            log.error("%s", exc)
            return 1
        health.set_inheritable(True)
    with listener, health or contextlib.nullcontext():
        return asyncio.run(_Supervisor(settings, workers, log_level, listener, health).run())


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    link: Link | None = None
    started: float = 0.0
    ready: bool = False
    early_exits: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class _Supervisor:
    def __init__(
        self,
        settings: GatewaySettings,
        workers: int,
        log_level: str,
        listener: socket.socket,
        health: socket.socket | None,
    ) -> None:
        self._settings = settings
        self._log_level = log_level
        self._listener = listener
        self._health = health
        self._slots = [_Slot(k) for k in range(workers)]
        self._hub = Hub(apply_timeout_s=settings.control.timeout_s)
        self._replica_base = settings.server.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self._context = multiprocessing.get_context("spawn")
        self._stopping = asyncio.Event()
        self._failed = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        host, port = self._listener.getsockname()[:2]
        log.info("gateway: %d workers on http://%s:%s (supervisor pid %d)",
                 len(self._slots), host, port, os.getpid())  # fmt: skip
        for slot in self._slots:
            await self._start(slot)
        await self._stopping.wait()
        await self._stop_all()
        return 1 if self._failed else 0

    async def _start(self, slot: _Slot) -> None:
        ours, theirs = socket.socketpair()
        settings = worker_settings(self._settings, slot.index, self._replica_base)
        process = self._context.Process(
            target=run_worker,
            args=(settings, slot.index, self._log_level, self._listener, theirs, self._health),
            name=f"gateway-worker-{slot.index}",
        )
        process.start()
        theirs.close()
        slot.process, slot.started, slot.ready = process, time.monotonic(), False
        slot.ended = asyncio.Event()

        def ready() -> None:
            slot.ready, slot.early_exits = True, 0
            log.info("worker %d ready (pid %s)", slot.index, process.pid)

        slot.link = Link(ours, self._hub.handlers(slot.index, ready), f"worker {slot.index}")
        await slot.link.start()
        self._hub.attach(slot.index, slot.link)
        asyncio.get_running_loop().add_reader(process.sentinel, self._ended, slot)

    def _ended(self, slot: _Slot) -> None:
        process = slot.process
        assert process is not None
        asyncio.get_running_loop().remove_reader(process.sentinel)
        process.join(0)
        self._hub.detach(slot.index)
        slot.ended.set()
        task = asyncio.create_task(self._after_end(slot, process))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_end(self, slot: _Slot, process: BaseProcess) -> None:
        if slot.link is not None:
            await slot.link.close()
        if self._stopping.is_set():
            return
        if process.exitcode is None:
            # the sentinel closes as the process exits, a moment before the kernel can reap it
            await asyncio.to_thread(process.join, 5.0)
        code = process.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        lived = time.monotonic() - slot.started
        if not slot.ready:
            slot.early_exits += 1
            if slot.early_exits >= _MAX_EARLY_EXITS:
                log.error("worker %d ended (%s) %d times before it served: stopping the server",
                          slot.index, how, slot.early_exits)  # fmt: skip
                self._failed = True
                self._stopping.set()
                return
        delay = 0.0 if lived >= _HEALTHY_S else min(30.0, 0.5 * 2 ** max(0, slot.early_exits - 1))
        log.error("worker %d (pid %s) ended (%s) after %.1f s; restarting it in %.1f s",
                  slot.index, process.pid, how, lived, delay)  # fmt: skip
        self._hub.restarts.inc()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        if not self._stopping.is_set():
            await self._start(slot)

    async def _stop_all(self) -> None:
        """SIGTERM every worker; each drains (connections, queued batches, feature log) within
        its own shutdown timeout, side by side; what is left after twice that is killed."""
        alive = [s for s in self._slots if s.process is not None and s.process.is_alive()]
        for slot in alive:
            if slot.process is not None and slot.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGTERM)
        grace_s = 2 * self._settings.server.shutdown_timeout_s + 1
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.gather(*(s.ended.wait() for s in alive))
        except TimeoutError:
            for slot in alive:
                if slot.process is not None and slot.process.is_alive():
                    log.error("worker %d did not stop within %.0f s: killed", slot.index, grace_s)
                    slot.process.kill()
                    slot.process.join()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in self._slots:
            if slot.link is not None:
                await slot.link.close()
        log.info("gateway: all workers stopped")
