"""Finding the command-line tools the deployment tests run (never skipped when missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["run_ok", "tool"]


def tool(name: str, installed_by: str) -> str:
    """The path of ``name``, from this virtualenv's bin or the PATH; fails saying what installs
    it."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    assert found is not None, f"{name} is not installed ({installed_by})"
    return found


def run_ok(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run ``command``; fail with its output unless it exits 0; its standard output."""
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=900
    )
    assert result.returncode == 0, f"{command}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout
