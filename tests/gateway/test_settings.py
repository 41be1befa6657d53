from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import load_settings


def test_file_values_and_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "server: {port: 9000}\n"
        "registry: {root: models}\n"
        "batching: {max_batch_size: 16}\n"
        "models:\n  - {name: fraud, ref: fraud@champion, batching: {max_batch_delay_s: 0.01}}\n"
    )
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "9100")
    monkeypatch.setenv("GATEWAY_BATCHING__MAX_QUEUE_SIZE", "10")
    settings = load_settings(path)
    assert settings.server.port == 9100
    assert settings.batching.max_batch_size == 16
    assert settings.batching.max_queue_size == 10
    assert settings.registry.root == (tmp_path / "models").resolve()
    model = settings.models[0]
    effective = settings.batching_for(model)
    assert effective.max_batch_delay_s == 0.01
    assert effective.max_batch_size == 16
    assert str(model.model_ref) == "fraud@champion"


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[server]\nport = 9200\n[[models]]\nname = "m"\nref = "m/3"\n')
    settings = load_settings(path)
    assert settings.server.port == 9200
    assert settings.models[0].model_ref.version == "3"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("batching: {max_batch_size: 0}", "batching.max_batch_size"),
        ("server: {port: 70000}", "server.port"),
        ("server: {prot: 1}", "server.prot"),
        ("models: [{name: m, ref: 'not:a ref'}]", "invalid model reference"),
        ("models: [{name: m, ref: m@a}, {name: m, ref: m@b}]", "duplicate endpoint names"),
        ("models: [{name: m, ref: m@a, batching: {size: 3}}]", "unknown batching settings"),
        ("registry: {backend: mlflow}", "registry.mlflow_url is required"),
        ("registry: [1", "cannot be parsed"),
        ("- 1", "mapping at the top level"),
    ],
)
def test_bad_settings_name_what_is_wrong(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(path)


def test_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_RUNTIME__WORKER_THREADS", "many")
    with pytest.raises(ConfigError, match=r"runtime\.worker_threads"):
        load_settings()


def test_mlflow_token_is_a_secret() -> None:
    settings = load_settings(
        registry__backend="mlflow", registry__mlflow_url="http://x", registry__mlflow_token="s3cr3t"
    )
    assert "s3cr3t" not in repr(settings)
    assert settings.registry.mlflow_token is not None
    assert settings.registry.mlflow_token.get_secret_value() == "s3cr3t"


def test_the_audit_log_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "gw.yaml"
    path.parent.mkdir()
    path.write_text("admin: {audit_log: logs/audit.jsonl}\n")
    assert load_settings(path).admin.audit_log == (tmp_path / "conf" / "logs" / "audit.jsonl")


def test_the_control_topic_needs_a_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"control\.signing_key is required"):
        load_settings(control={"enabled": True})
    with pytest.raises(ConfigError, match="at least 32 characters"):
        load_settings(control={"enabled": True, "signing_key": "short"})
    monkeypatch.setenv("GATEWAY_CONTROL__SIGNING_KEY", "k" * 32)
    settings = load_settings(control={"enabled": True})
    assert settings.control.signing_key is not None
    assert "k" * 32 not in repr(settings)


async def test_control_channel_options_suit_both_its_producer_and_its_consumer() -> None:
    """The control channel takes the feature log's connection; a producer-only option there
    made its consumer refuse to start (every route change then timed out)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from gateway.assembly import control_options

    settings = load_settings(
        None,
        feature_log={"enabled": True, "bootstrap_servers": "127.0.0.1:1"},
        control={"enabled": True, "signing_key": "k" * 32, "bootstrap_servers": "127.0.0.1:2"},
    )
    options = control_options(settings)
    assert options["bootstrap_servers"] == "127.0.0.1:2"
    consumer = AIOKafkaConsumer("gateway-control", **options)  # raises on an unknown option
    producer = AIOKafkaProducer(**options)
    await consumer.stop()
    await producer.stop()
