"""The image's HEALTHCHECK: ask the container's server on the port it actually listens on.

Docker runs this every interval, so it stays on the standard library (importing the gateway's
settings to read the port would cost most of a second of CPU each time). Instead it finds the
TCP ports that the main process (PID 1 in a container; ``--pid`` elsewhere) and its children
listen on, which follows the config file, ``GATEWAY_*``/``MONITOR_*``/``RETRAIN_*`` variables and
``--port`` alike, and gets the health path of what the command line started: ``/v2/health/live``
for the gateway, ``/health`` for the drift monitor and the retraining worker (``python -m
monitors ...``). Exit status 0 when one answers 200, else 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["health_path", "listening_addresses", "main"]

_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def _pids(root: int) -> list[int]:
    """``root`` and its children (the workers of a multi-process server)."""
    pids = [root]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may hold spaces; the parent PID is the second field
        # after it.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == root:
            pids.append(int(entry.name))
    return pids


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _address(hex_address: str) -> str:
    """``/proc/net/tcp`` notation (host byte order, 32-bit words) to an address to connect to."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "[::1]"
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        return str(mapped) if mapped is not None else f"[{address}]"
    return str(address)


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(host, port) of every TCP socket that ``pid`` or one of its children listens on."""
    inodes: set[str] = set()
    for each in _pids(pid):
        inodes |= _socket_inodes(each)
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and inode in inodes:
                host, port = local.split(":")
                found.append((_address(host), int(port, 16)))
    return sorted(set(found))


def health_path(argv: list[str]) -> str:
    """The health endpoint of the server that ``argv`` starts."""
    if "monitors" in argv or any(arg.endswith("/monitors") for arg in argv):
        return "/health"
    return "/v2/health/live"


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, default=1, help="the server's process (default 1)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per request")
    options = parser.parse_args(args)
    try:
        cmdline = Path(f"/proc/{options.pid}/cmdline").read_bytes()
    except OSError as exc:
        print(f"healthcheck: no process {options.pid}: {exc}", file=sys.stderr)
        return 1
    path = health_path([arg.decode(errors="replace") for arg in cmdline.split(b"\0") if arg])
    addresses = listening_addresses(options.pid)
    if not addresses:
        print(f"healthcheck: process {options.pid} listens on no TCP port yet", file=sys.stderr)
        return 1
    for host, port in addresses:
        url = f"http://{host}:{port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=options.timeout) as response:
                if response.status == 200:
                    return 0
        except (urllib.error.URLError, OSError) as exc:
            print(f"healthcheck: {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
