"""Listening sockets for every server of the project (the gateway's ports, the monitor's, the
retraining worker's, the embedded broker's check): bound here, before the server starts, so a
taken port is one error naming the setting, not a traceback from inside a server's task."""

from __future__ import annotations

import socket

__all__ = ["listening_socket"]


def listening_socket(host: str, port: int, setting: str, backlog: int = 2048) -> socket.socket:
    """A socket listening on ``host:port`` (with SO_REUSEADDR, as the servers bind); raises
    OSError reading ``"<setting>: cannot listen on <host>:<port>: <why>"``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise OSError(f"{setting}: cannot listen on {host}:{port}: {exc}") from exc
    return sock
