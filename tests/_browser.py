"""A real headless browser for tests that look at pages: Debian's Chromium (``.ci/run``
installs it). A test that needs it fails, never skips, when it is missing."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Rendered", "render"]

# No network here (and none wanted): the background services that would reach out are off.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
]


@dataclass(frozen=True)
class Rendered:
    """What the browser made of a page: its screenshot's size and its console messages."""

    width: int
    height: int
    png_bytes: int
    console: list[str]
    dom: str


def render(page: Path, screenshot: Path, size: tuple[int, int] = (1200, 1600)) -> Rendered:
    """Load a local page in headless Chromium: a screenshot, the console, the DOM it built."""
    chromium = shutil.which("chromium")
    assert chromium is not None, "Debian's chromium is needed (apt-get install chromium)"
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        common = [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
        ]
        shot = subprocess.run(
            [*common, f"--screenshot={screenshot}", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    with tempfile.TemporaryDirectory() as profile:
        dump = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert dump.returncode == 0, dump.stderr[-2000:]
    console = [
        line
        for out in (shot.stderr, dump.stderr)
        for line in out.splitlines()
        if ":CONSOLE" in line
    ]
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return Rendered(width, height, len(data), console, dump.stdout)
