"""The benchmarks' measuring tools: a process tree's CPU time, wrk's report, the machine."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

from loadtests.closedloop import parse_wrk
from loadtests.machine import (
    machine_info,
    pin_process,
    process_tree_cpu,
    process_tree_cpu_s,
    thread_cpu_s,
)

_BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"
_PARENT = (
    "import subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
    "sys.stdout.write('started\\n'); sys.stdout.flush()\n"
    "child.wait(); sys.stdin.read()\n"
)


def test_process_tree_cpu_counts_the_children() -> None:
    # the parent only waits; its child burns 0.6 s of CPU: the tree's time must include it
    code = _PARENT.format(child=_BURN.format(s=0.6))
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "started\n"
            deadline = time.monotonic() + 60
            used = 0.0
            while used < 0.5 and time.monotonic() < deadline:
                used = process_tree_cpu_s(proc.pid)
                time.sleep(0.05)
            assert used >= 0.5
            assert process_tree_cpu_s(proc.pid) < 5.0
        finally:
            proc.kill()


def test_process_tree_cpu_of_a_gone_process_is_zero() -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as proc:
        proc.wait()
    assert process_tree_cpu_s(proc.pid) == 0.0


_THREAD_BURN = (
    "import sys, threading, time\n"
    "done = threading.Event()\n"
    "def burn():\n"
    "    end = time.thread_time() + 0.6\n"
    "    while time.thread_time() < end: pass\n"
    "    done.set(); threading.Event().wait()\n"
    "threading.Thread(target=burn, daemon=True).start(); done.wait()\n"
    "sys.stdout.write('burnt\\n'); sys.stdout.flush(); sys.stdin.read()\n"
)


@contextlib.contextmanager
def _child(script: str, ready: str) -> Iterator[int]:
    """A Python child running ``script``, once it has written the line ``ready``; its PID.
    It is killed when the block ends."""
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == ready + "\n"
            yield proc.pid
        finally:
            proc.kill()


def test_thread_cpu_names_the_thread_that_burnt() -> None:
    # the main thread waits while a second one burns 0.6 s: the split must say which
    with _child(_THREAD_BURN, "burnt") as pid:
        threads = thread_cpu_s(pid)
        main = threads.pop(pid)
        assert max(threads.values()) >= 0.5
        assert main < 0.4
        user, system = process_tree_cpu(pid)
        assert user + system >= 0.5  # the burn loop reads its clock: much is system time


def test_thread_cpu_of_a_gone_process_is_empty() -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as proc:
        proc.wait()
    assert thread_cpu_s(proc.pid) == {}
    assert process_tree_cpu(proc.pid) == (0.0, 0.0)


_THREADS_WAIT = (
    "import sys, threading\n"
    "done = threading.Event()\n"
    "for _ in range(3): threading.Thread(target=done.wait, daemon=True).start()\n"
    "sys.stdout.write('started\\n'); sys.stdout.flush(); sys.stdin.read()\n"
)


def test_pin_process_moves_threads_started_before() -> None:
    # a broker's worker threads exist before the benchmark pins it: all of them must move
    cpu = min(os.sched_getaffinity(0))
    with _child(_THREADS_WAIT, "started") as pid:
        pin_process(pid, {cpu})
        tasks = [int(task) for task in os.listdir(f"/proc/{pid}/task")]
        assert len(tasks) == 4
        assert {frozenset(os.sched_getaffinity(task)) for task in tasks} == {frozenset({cpu})}


_WRK = """Running 5s test @ http://127.0.0.1:8000/v2/models/mlp/infer
  1 threads and 256 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    20.10ms    8.12ms 120.33ms   80.00%
    Req/Sec    14.35k     1.20k   16.00k    70.00%
  Latency Distribution
     50%   18.49ms
     75%   21.00ms
     90%   23.51ms
     99%  1.02s
  71762 requests in 5.03s, 20.12MB read
  Socket errors: connect 0, read 2, write 0, timeout 7
  Non-2xx or 3xx responses: 9147
Requests/sec:  14271.07
Transfer/sec:      4.00MB
"""


def test_parse_wrk_reads_rate_percentiles_and_failures() -> None:
    result = parse_wrk(_WRK)
    assert result == {
        "rate": 14271.07,
        "p50_ms": 18.49,
        "p90_ms": 23.51,
        "p99_ms": 1020.0,
        "requests": 71762,
        "non_2xx": 9147,
        "socket_errors": 9,
    }


def test_machine_info_names_the_cpu_and_the_load() -> None:
    info = machine_info()
    assert info["nproc"] >= 1
    assert len(info["load_average"]) == 3
    assert info["cpu_model"]
    assert info["versions"]["onnxruntime"]
