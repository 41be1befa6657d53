"""The monitor's settings: the Kafka cluster's security, as the gateway's feature log has it."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi
import pytest
import yaml
from aiokafka import AIOKafkaConsumer

from monitors.kafka_security import KafkaSecurityError
from monitors.settings import MonitorSettings, SettingsError, load_settings


def _config(tmp_path: Path, kafka: dict[str, str]) -> Path:
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump({"kafka": kafka}))
    return path


def _sasl_over_tls(tmp_path: Path) -> MonitorSettings:
    ca = tmp_path / "tls" / "ca.crt"
    ca.parent.mkdir()
    ca.write_bytes(Path(certifi.where()).read_bytes())
    kafka = {
        "bootstrap_servers": "kafka-0.example:9094",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "monitor",
        "sasl_password": "s3cret",
        "ssl_cafile": "tls/ca.crt",  # relative to the config file
    }
    return load_settings(_config(tmp_path, kafka))


def test_sasl_over_tls_gives_the_consumer_its_credentials_and_ca(tmp_path: Path) -> None:
    settings = _sasl_over_tls(tmp_path)
    assert settings.kafka.ssl_cafile == tmp_path / "tls" / "ca.crt"
    assert "s3cret" not in repr(settings)
    options = settings.kafka.security_options()
    context = options.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "monitor",
        "sasl_plain_password": "s3cret",
    }


async def test_aiokafka_takes_the_security_options_as_they_are(tmp_path: Path) -> None:
    # aiokafka checks the protocol, the mechanism and the TLS context together
    settings = _sasl_over_tls(tmp_path)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, **settings.kafka.security_options()
    )
    await consumer.stop()


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert load_settings().kafka.security_options() == {"security_protocol": "PLAINTEXT"}


def test_sasl_without_its_credentials_is_refused_naming_the_settings(tmp_path: Path) -> None:
    path = _config(tmp_path, {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "monitor"})
    with pytest.raises(
        SettingsError, match=r"kafka\.sasl_mechanism, sasl_username and sasl_password"
    ):
        load_settings(path)


@pytest.mark.parametrize(
    ("name", "text", "named"),
    [
        ("monitor.yaml", "window: [1", "cannot be parsed"),
        ("monitor.yaml", "- 1", "mapping at the top level"),
        ("monitor.toml", "[window]\nsize = 0\n", r"window\.size"),
        ("monitor.yaml", "\udcff\udcfe window: 1", "cannot be read: 'utf-8' codec"),
        ("monitor.yaml", 'registry_root: "a\\0b"', r"registry_root: .*null"),
        ("monitor.yaml", 'state_dir: "/a\\0b"', r"state_dir: .*null"),
    ],
)
def test_a_bad_config_file_is_named_not_raised_as_it_is(
    tmp_path: Path, name: str, text: str, named: str
) -> None:
    path = tmp_path / name
    path.write_text(text, errors="surrogateescape")  # the first: bytes that are not UTF-8
    with pytest.raises(SettingsError, match=named):
        load_settings(path)
    with pytest.raises(SettingsError, match="is not a file"):
        load_settings(tmp_path)


@pytest.mark.parametrize("url", ["http://[::1", "ftp://hooks.example/x", "hooks.example/x"])
def test_a_webhook_url_that_is_not_an_http_url_is_refused_naming_it(
    tmp_path: Path, url: str
) -> None:
    # 'http://[::1' was taken, and every event then raised httpx.InvalidURL out of the
    # delivery (logged as a bug, its failure never counted); the others failed every event
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump({"webhooks": [{"name": "w", "url": url, "secret": "s"}]}))
    with pytest.raises(SettingsError, match="webhook 'w': url"):
        load_settings(path)


@pytest.mark.parametrize(
    ("window", "named"),
    [
        ({"size": 1000, "slide": 400}, r"window\.size \(1000\) must be a whole multiple"),
        ({"size": 100, "slide": 300}, r"window\.size \(100\) must be a whole multiple"),
        ({"by": "time", "size": 25, "slide": 10}, r"window\.size \(25\) must be a whole"),
        ({"size": 10, "slide": 0.5}, r"window\.size and window\.slide count rows"),
        ({"size": 100.5, "slide": 100.5}, r"window\.size and window\.slide count rows"),
    ],
)
def test_a_window_that_is_not_whole_slides_is_refused_naming_it(
    window: dict[str, object], named: str
) -> None:
    # Before: 1000 by 400 made windows of 800 rows, 100 by 300 of 300, 25 s by 10 of 20 s,
    # 100.5 rows of 100, and a count slide of 0.5 rows hung the consumer loop.
    with pytest.raises(SettingsError, match=named):
        load_settings(window=window)


def test_whole_slides_are_taken_whatever_the_floats() -> None:
    assert load_settings(window={"by": "time", "size": 0.3, "slide": 0.1}).window.size == 0.3
    assert load_settings(window={"size": 5000, "slide": 1000}).window.slide == 1000


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read"), (b"not a certificate", "not a usable CA certificate")],
)
def test_a_tls_file_that_cannot_be_used_is_an_error_naming_the_setting(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    # Before, the TLS context was made where the client started: a FileNotFoundError or an
    # SSLError traceback from inside the consumer's task, naming no setting.
    ca = tmp_path / "ca.crt"
    if content is not None:
        ca.write_bytes(content)
    settings = load_settings(
        _config(tmp_path, {"security_protocol": "SSL", "ssl_cafile": str(ca)})
    )  # the file is read where the client starts: a config can name a pod's mounted file
    with pytest.raises(KafkaSecurityError, match=rf"^kafka\.ssl_cafile: {problem}"):
        settings.kafka.security_options()
