"""deploy/prometheus: promtool's checks and unit tests, and a real Prometheus scraping a real
gateway and a real monitor, with one alert provoked."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from monitors.broker import EmbeddedBroker, create_topics
from tests._support import (
    feature_log_gateway_config,
    free_port,
    running_process,
    start_gateway,
    start_monitor,
)
from tests.deploy._metrics import dashboard_queries, exported_series, metric_names
from tests.deploy._tools import run_ok, tool

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy/prometheus"
RULES = PROMETHEUS / "alerts.yml"
UNIT_TESTS = PROMETHEUS / "alerts_test.yml"
PROMETHEUS_PACKAGE = "Debian package prometheus, installed by .ci/run"
ROW = {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [14.0] * 30}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_pass_promtool_check() -> None:
    run_ok([tool("promtool", PROMETHEUS_PACKAGE), "check", "rules", str(RULES)])


def test_rules_pass_their_promtool_unit_tests() -> None:
    run_ok([tool("promtool", PROMETHEUS_PACKAGE), "test", "rules", str(UNIT_TESTS)], PROMETHEUS)


def test_every_rule_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    alerts = {rule["alert"] for rule in _rules()}
    assert fires == alerts
    assert quiet == alerts


def test_rules_name_only_metrics_the_gateway_or_the_monitor_exports() -> None:
    exported = exported_series()
    for rule in _rules():
        names = metric_names(rule["expr"])
        assert names <= exported, f"{rule['alert']}: unknown {sorted(names - exported)}"
        assert names or "up{" in rule["expr"], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


# -- a real Prometheus ----------------------------------------------------------------------


@contextlib.contextmanager
def _prometheus(tmp_path: Path, targets: dict[str, str], rules: Path) -> Iterator[str]:
    """Prometheus on a free port scraping ``targets`` (job -> host:port) every second."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        tool("prometheus", PROMETHEUS_PACKAGE),
        f"--config.file={path}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    with running_process(command, tmp_path / "prometheus.log", f"{url}/-/ready", 60):
        yield url


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _firing(prometheus: str) -> dict[str, list[dict[str, str]]]:
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    firing: dict[str, list[dict[str, str]]] = {}
    for alert in alerts:
        if alert["state"] == "firing":
            firing.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
    return firing


def _wait_for(what: str, check: Any, timeout_s: float, between: Any = None) -> Any:
    """Poll ``check()`` until it returns something true; ``between()`` runs between polls."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if between is not None:
            between()
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s} s")


def _send(url: str, count: int) -> None:
    with httpx.Client(timeout=30) as client:
        for i in range(count):
            body = {"id": f"r{time.monotonic_ns()}-{i}", "inputs": [ROW]}
            answer = client.post(f"{url}/v2/models/breast_cancer/infer", json=body)
            assert answer.status_code == 200, answer.text


KEY_SERIES = [
    'up{job="model-gateway"} == 1',
    'up{job="model-gateway-monitor"} == 1',
    'gateway_requests_total{model="breast_cancer", outcome="success"} > 0',
    'gateway_request_duration_seconds_bucket{model="breast_cancer", le="+Inf"} > 0',
    'gateway_batch_rows_count{model="breast_cancer"} > 0',
    'gateway_queue_depth{model="breast_cancer"}',
    "gateway_model_loaded == 1",
    'gateway_feature_log_records_total{event="produced"} > 0',
    "gateway_feature_log_spool_bytes",
    'monitor_records_total{model="breast_cancer"} > 0',
    "monitor_assigned_partitions > 0",
    "monitor_lag_records",
]


@pytest.mark.e2e
def test_prometheus_scrapes_gateway_and_monitor_and_fires_feature_log_spooling(
    tmp_path: Path, demo_registry: Path, broker: EmbeddedBroker
) -> None:
    asyncio.run(create_topics(broker.bootstrap_servers, ["inference-log"], partitions=3))
    # The shipped rules, with every `for` cut to a second: the expressions are the real ones.
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    rules_path = tmp_path / "alerts.yml"
    rules_path.write_text(yaml.safe_dump(rules))
    gateway_config = feature_log_gateway_config(
        demo_registry, broker.bootstrap_servers, tmp_path / "spool", timeout_s=1.0
    )
    monitor_config = {
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": "inference-log"},
        "registry_root": str(demo_registry),
        "state_dir": str(tmp_path / "monitor-state"),
        "window": {"by": "count", "size": 100, "slide": 100},
        "http": {"port": free_port()},
    }
    with (
        start_gateway(tmp_path, gateway_config) as gateway,
        start_monitor(tmp_path, monitor_config) as (_, monitor_url),
    ):
        targets = {
            "model-gateway": gateway.url.removeprefix("http://"),
            "model-gateway-monitor": monitor_url.removeprefix("http://"),
        }
        with _prometheus(tmp_path, targets, rules_path) as prometheus:
            _send(gateway.url, 200)
            for expr in KEY_SERIES:
                _wait_for(f"no series for {expr}", lambda e=expr: _query(prometheus, e), 60)
            # every dashboard query is valid PromQL for a real Prometheus, with the
            # dashboard's variables set to what Grafana sends for "All"
            for expr in dashboard_queries():
                promql = expr.replace("$__rate_interval", "1m").replace("$endpoint", ".*")
                if not promql.startswith("label_values("):
                    _query(prometheus, promql.replace("$model", ".*").replace("$metric", ".*"))
            assert "FeatureLogSpooling" not in _firing(prometheus)
            assert "GatewayDown" not in _firing(prometheus)

            # Provoke: Kafka goes away while requests keep coming; records go to the spool.
            broker.stop()
            firing = _wait_for(
                "FeatureLogSpooling did not fire",
                lambda: _firing(prometheus).get("FeatureLogSpooling"),
                120,
                between=lambda: _send(gateway.url, 20),
            )
    assert firing == [
        {
            "alertname": "FeatureLogSpooling",
            "instance": targets["model-gateway"],
            "job": "model-gateway",
            "severity": "warning",
        }
    ]
