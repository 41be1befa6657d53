"""Finding the command-line tools the deployment tests run (never skipped when missing)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["tool"]


def tool(name: str, installed_by: str) -> str:
    """The path of ``name``, from this virtualenv's bin or the PATH; fails saying what installs
    it."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    assert found is not None, f"{name} is not installed ({installed_by})"
    return found
