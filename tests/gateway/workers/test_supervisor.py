from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.settings import load_settings
from gateway.workers import usable_cores, worker_count
from gateway.workers.worker import worker_settings


def test_auto_is_the_usable_cores_and_a_number_is_itself() -> None:
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))
    assert worker_count("auto") == usable_cores()
    assert worker_count(3) == 3


def test_workers_setting_from_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("server: {workers: auto}\n")
    assert load_settings(path).server.workers == "auto"
    monkeypatch.setenv("GATEWAY_SERVER__WORKERS", "4")
    assert load_settings(path).server.workers == 4
    monkeypatch.setenv("GATEWAY_SERVER__WORKERS", "0")
    with pytest.raises(ConfigError, match=r"server\.workers"):
        load_settings(path)


def test_the_command_line_refuses_a_bad_worker_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--workers", "none"])
    assert exit_info.value.code == 2
    assert "expected a number >= 1 or auto" in capsys.readouterr().err


def test_each_worker_has_its_own_spool_and_a_replica_id_that_survives_restarts(
    tmp_path: Path,
) -> None:
    settings = load_settings(feature_log__spool_dir=str(tmp_path / "spool"))
    one = worker_settings(settings, 1, "host-7")
    assert one.feature_log.spool_dir == tmp_path / "spool" / "worker-1"
    assert one.server.replica_id == "host-7-w1"
    assert one.server.workers == 1
    assert settings.feature_log.spool_dir == tmp_path / "spool"  # the original is unchanged
