"""What a result was measured on: the CPU, its cores, the load, and the software's versions.

Written with every result file (once before and once after a run): on a shared machine the
load average says how quiet it was, and figures from machines of another kind do not compare.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "machine_info",
    "pin_process",
    "process_tree_cpu",
    "process_tree_cpu_s",
    "thread_cpu_s",
]

_PACKAGES = ("onnxruntime", "numpy", "uvicorn", "uvloop", "httptools", "starlette", "aiokafka")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """The CPU model, the cores this process may use and the machine has, the load average,
    the Python and the serving libraries' versions."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": _cpu_model(),
        "nproc": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "versions": versions,
    }


def pin_process(pid: int | None, cpus: set[int]) -> None:
    """Move every thread of a running process to ``cpus``; threads it starts later inherit it.

    ``taskset -p`` without ``-a`` (and ``sched_setaffinity`` on the PID) moves only the main
    thread: a broker's worker threads, started before, would go on running on every CPU,
    the server's included, and take its time unseen in the server's own CPU figures.
    """
    if pid is None:
        raise ValueError("the process to pin has not started")
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        found: list[int] = []
        for task in tasks:
            text = (task / "children").read_text().split()
            found += [int(child) for child in text]
        return found
    except OSError:
        return []


def _stat(path: Path) -> tuple[float, float]:
    """User and system CPU seconds from a /proc stat file; zeros if the process is gone."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and every living descendant (the server's whole process tree)."""
    user, system = process_tree_cpu(pid)
    return user + system


def process_tree_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` and every living descendant."""
    user = system = 0.0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        more_user, more_system = _stat(Path(f"/proc/{current}/stat"))
        user += more_user
        system += more_system
        pending += _children(current)
    return user, system


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user plus system) of each thread of one process, by thread id."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return {}
    return {int(task.name): sum(_stat(task / "stat")) for task in tasks}
