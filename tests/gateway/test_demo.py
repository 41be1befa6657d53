"""``gateway demo``: the demo model in a local registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main


def test_a_registry_folder_that_cannot_be_made_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, a FileNotFoundError (or PermissionError) traceback.
    (tmp_path / "a-file").write_text("")
    registry = tmp_path / "a-file" / "registry"
    assert main(["demo", "--registry", str(registry)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"gateway demo: cannot write the registry at {registry}: ")
    assert error.count("\n") == 1
