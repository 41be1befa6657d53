"""The worker's settings: bad configuration stops it at start, naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from monitors.__main__ import main
from monitors.retrain.settings import SettingsError, load_settings


def write(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_example_config_loads_with_paths_beside_it() -> None:
    example = Path(__file__).parents[3] / "examples" / "retrain.yaml"
    settings = load_settings(example)
    assert settings.state_dir == (example.parent / "../var/retrain-state").resolve()
    assert settings.canary.admin_token is not None
    assert settings.trainer == "monitors.retrain.demo_model:DemoTrainer"


def test_missing_or_invalid_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="secret"):
        load_settings(write(tmp_path, {"canary": {"enabled": False}}))
    with pytest.raises(SettingsError, match=r"canary\.admin_token is required"):
        load_settings(write(tmp_path, {"secret": "s"}))
    with pytest.raises(SettingsError, match=r"validation\.primary_metric"):
        load_settings(
            write(
                tmp_path,
                {
                    "secret": "s",
                    "canary": {"enabled": False},
                    "validation": {"primary_metric": "vibes"},
                },
            )
        )
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nothing.yaml")


def test_serve_refuses_a_bad_trainer_or_canary_rule_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"secret": "s", "state_dir": str(tmp_path / "state"), "http": {"port": 1}}
    trainer = write(tmp_path, {**base, "canary": {"enabled": False}, "trainer": "no.such:Thing"})
    assert main(["retrain", "serve", "--config", str(trainer)]) == 2
    assert "cannot import no.such" in capsys.readouterr().err
    steps = write(tmp_path, {**base, "canary": {"admin_token": "t", "steps": [50, 10]}})
    assert main(["retrain", "serve", "--config", str(steps)]) == 2
    assert "steps [50, 10] must be increasing" in capsys.readouterr().err


def test_kafka_certificate_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    """The worker reads its file as the monitor does (one reader): a CA file named relative
    to the config is found from any working directory."""
    config = tmp_path / "conf" / "retrain.yaml"
    config.parent.mkdir()
    config.write_text(
        "secret: s\ncanary: {enabled: false}\nkafka: {ssl_cafile: certs/ca.pem}\nstate_dir: state\n"
    )
    settings = load_settings(config)
    assert settings.kafka.ssl_cafile == tmp_path / "conf" / "certs" / "ca.pem"
    assert settings.state_dir == tmp_path / "conf" / "state"
