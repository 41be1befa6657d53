"""deploy/kubernetes: every manifest valid against the Kubernetes schema, file by file and as
kustomize renders the base and the overlays, and the policies a platform team checks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings, load_settings
from monitors.retrain.settings import RetrainSettings
from monitors.retrain.settings import load_settings as load_retrain_settings
from monitors.settings import MonitorSettings
from monitors.settings import load_settings as load_monitor_settings
from tests.deploy._tools import run_ok, tool

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy/kubernetes"
# The oldest Kubernetes minor still commonly run, and the newest the schemas know.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
TARGETS = ("base", "overlays/production")
Doc = dict[str, Any]


def _documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _render(target: str) -> list[Doc]:
    """``kubectl kustomize`` (kustomize built into kubectl) of a kustomization directory."""
    kubectl = tool("kubectl", "kubectl, which has kustomize built in")
    rendered = run_ok([kubectl, "kustomize", str(KUBERNETES / target)])
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def _manifest_files() -> list[Path]:
    """Whole objects, each file valid on its own (patches and kustomizations are not)."""
    files = [*sorted((KUBERNETES / "base").glob("*.yaml")), KUBERNETES / "secrets.example.yaml"]
    return [f for f in files if f.name != "kustomization.yaml"]


def _validate(doc: Doc) -> None:
    for version in VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def _is_custom(doc: Doc) -> bool:
    return str(doc["apiVersion"]).startswith("monitoring.coreos.com/")


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_each_manifest_file_is_valid_on_its_own(path: Path) -> None:
    for doc in _documents(path):
        if _is_custom(doc):
            _check_service_monitor(doc)
        else:
            _validate(doc)


@pytest.mark.parametrize("target", TARGETS)
def test_rendered_manifests_are_valid_and_follow_policy(target: str) -> None:
    docs = _render(target)
    for doc in docs:
        if _is_custom(doc):
            _check_service_monitor(doc)
        else:
            _validate(doc)
    kinds = sorted({doc["kind"] for doc in docs})
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Ingress",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created apart"
    for deployment in _of(docs, "Deployment"):
        _check_pod_policy(deployment)
        _check_references(deployment, docs)
    _check_selectors(docs)


@pytest.mark.parametrize("target", TARGETS)
def test_rendered_configs_and_environment_make_valid_settings(target: str) -> None:
    docs = _render(target)
    gateway = _settings(docs, "gateway")
    assert isinstance(gateway, GatewaySettings)
    monitor = _settings(docs, "monitor")
    assert isinstance(monitor, MonitorSettings)
    gateway_pod = _deployment(docs, "gateway")["spec"]["template"]["spec"]
    monitor_pod = _deployment(docs, "monitor")["spec"]["template"]["spec"]
    # everything written at run time lies on a writable volume (the root filesystem is not)
    for path in (
        gateway.registry.cache_dir,
        gateway.feature_log.spool_dir,
        gateway.admin.audit_log,
    ):
        assert _on_writable_volume(gateway_pod, path), path
    assert _on_writable_volume(monitor_pod, monitor.state_dir)
    # the monitor's state lives in the changelog topic: its directory is a cache, on no shared
    # or persistent volume, so its pods can run on any node
    (state,) = [v for v in monitor_pod["volumes"] if v["name"] == "state"]
    assert "emptyDir" in state, state
    assert not [v for v in monitor_pod["volumes"] if "persistentVolumeClaim" in v]
    assert monitor.kafka.changelog.create
    assert monitor.kafka.changelog.max_message_bytes <= 1_000_000
    assert gateway.server.host == monitor.http.host == "0.0.0.0"
    gateway_ports = {p["containerPort"] for p in gateway_pod["containers"][0]["ports"]}
    assert gateway.server.port in gateway_ports
    assert monitor.http.port in {p["containerPort"] for p in monitor_pod["containers"][0]["ports"]}
    # the grace period covers the preStop delay and the gateway's own drain
    container = gateway_pod["containers"][0]
    delay = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert gateway_pod["terminationGracePeriodSeconds"] > delay + gateway.server.shutdown_timeout_s
    assert gateway.feature_log.enabled
    assert gateway.control.enabled
    if target == "overlays/production":
        assert gateway.registry.backend == "mlflow"
        assert gateway.feature_log.security_protocol == "SASL_SSL"
        assert gateway.feature_log.ssl_cafile is not None
        assert _on_volume(gateway_pod, gateway.feature_log.ssl_cafile)
        assert monitor.kafka.security_protocol == "SASL_SSL"
        assert monitor.kafka.sasl_mechanism == gateway.feature_log.sasl_mechanism
        assert monitor.kafka.ssl_cafile is not None
        assert _on_volume(monitor_pod, monitor.kafka.ssl_cafile)
    assert monitor.kafka.bootstrap_servers == gateway.feature_log.bootstrap_servers
    _check_retrain_settings(target, docs, gateway)


def _check_retrain_settings(target: str, docs: list[Doc], gateway: GatewaySettings) -> None:
    """The retraining worker's settings as its pod sees them, and its wiring to the others."""
    retrain = _settings(docs, "retrain")
    assert isinstance(retrain, RetrainSettings)
    deployment = _deployment(docs, "retrain")
    pod = deployment["spec"]["template"]["spec"]
    # its sqlite job store has one writer: one pod, the old one gone before the new one starts
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    # the job store outlives the pod, so a restarted worker resumes or fails its jobs
    assert _on_writable_volume(pod, retrain.state_dir)
    assert _on_persistent_volume(pod, retrain.state_dir)
    assert _on_writable_volume(pod, retrain.registry.cache_dir)
    assert retrain.http.host == "0.0.0.0"
    assert retrain.http.port in {p["containerPort"] for p in pod["containers"][0]["ports"]}
    assert retrain.kafka.bootstrap_servers == gateway.feature_log.bootstrap_servers
    # the canary goes through the gateway's Service, with a token the gateway accepts
    assert retrain.canary.enabled
    assert retrain.canary.gateway_url == _service_url(docs, "model-gateway")
    assert retrain.canary.admin_token is not None
    tokens = gateway.admin.tokens
    assert retrain.canary.admin_token.get_secret_value() in [
        t.get_secret_value() for t in tokens.values()
    ]
    if target == "overlays/production":
        assert retrain.registry.backend == gateway.registry.backend == "mlflow"
        assert retrain.registry.mlflow_url == gateway.registry.mlflow_url
        assert retrain.kafka.security_protocol == "SASL_SSL"
        assert retrain.kafka.sasl_mechanism == gateway.feature_log.sasl_mechanism
        assert retrain.kafka.ssl_cafile is not None
        assert _on_volume(pod, retrain.kafka.ssl_cafile)


def _service_url(docs: list[Doc], name: str) -> str:
    (service,) = [d for d in _of(docs, "Service") if d["metadata"]["name"] == name]
    return f"http://{name}:{service['spec']['ports'][0]['port']}"


def test_the_monitors_webhook_reaches_the_worker_with_its_secret() -> None:
    docs = _render("base")
    secrets = _example_secrets()
    webhooks = yaml.safe_load(secrets["model-gateway-webhooks"]["webhooks"])
    (retrain,) = [w for w in webhooks if w["name"] == "retrain"]
    # the worker's receiver is POST /events (monitors/retrain/app.py)
    assert retrain["url"] == _service_url(docs, "model-gateway-retrain") + "/events"
    assert retrain["secret"] == secrets["model-gateway-retrain"]["secret"]
    # only the monitor pods (and Prometheus) may open the worker's port
    (policy,) = [
        d for d in _of(docs, "NetworkPolicy") if d["metadata"]["name"] == "model-gateway-retrain"
    ]
    monitor_pod = _deployment(docs, "monitor")["spec"]["template"]["metadata"]["labels"]
    gateway_pod = _deployment(docs, "gateway")["spec"]["template"]["metadata"]["labels"]
    (rule,) = policy["spec"]["ingress"]
    pods = [p["podSelector"]["matchLabels"] for p in rule["from"] if "podSelector" in p]
    assert [_matches(p, monitor_pod) for p in pods] == [True]
    assert not _matches(pods[0], gateway_pod)
    namespaces = [p["namespaceSelector"] for p in rule["from"] if "namespaceSelector" in p]
    assert namespaces == [{"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}]
    # and the worker may reach the gateway's admin API
    retrain_pod = _deployment(docs, "retrain")["spec"]["template"]["metadata"]["labels"]
    (gateway_policy,) = [
        d for d in _of(docs, "NetworkPolicy") if d["metadata"]["name"] == "model-gateway"
    ]
    admitted = [
        p["podSelector"]["matchLabels"]
        for r in gateway_policy["spec"]["ingress"]
        for p in r["from"]
        if "podSelector" in p
    ]
    assert any(_matches(p, retrain_pod) for p in admitted)


def test_the_gateways_reach_the_monitor_for_the_canary_quality_gate() -> None:
    docs = _render("base")
    gateway_pod = _deployment(docs, "gateway")["spec"]["template"]["metadata"]["labels"]
    retrain_pod = _deployment(docs, "retrain")["spec"]["template"]["metadata"]["labels"]
    (policy,) = [
        d for d in _of(docs, "NetworkPolicy") if d["metadata"]["name"] == "model-gateway-monitor"
    ]
    admitted = [
        p["podSelector"]["matchLabels"]
        for r in policy["spec"]["ingress"]
        for p in r["from"]
        if "podSelector" in p
    ]
    assert any(_matches(p, gateway_pod) for p in admitted)
    assert any(_matches(p, retrain_pod) for p in admitted)


def test_queue_depth_autoscaling_uses_the_adapters_metric_which_the_gateway_exports() -> None:
    hpa = next(d for d in _render("overlays/production") if d["kind"] == "HorizontalPodAutoscaler")
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    resources = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert resources == ["cpu"]
    rules = yaml.safe_load((KUBERNETES / "prometheus-adapter/rules.yaml").read_text())
    published = [rule["name"]["as"] for rule in rules["rules"]["custom"]]
    assert pods == ["gateway_queue_depth"]
    assert set(pods) <= set(published)
    exported = {
        metric.name for metric in GatewayMetrics(CollectorRegistry(), "test").registry.collect()
    }
    for rule in rules["rules"]["custom"]:
        assert rule["seriesQuery"].split("{")[0] in exported


def test_the_ingress_routes_no_admin_or_metrics_path_out_of_the_cluster() -> None:
    (ingress,) = [d for d in _render("base") if d["kind"] == "Ingress"]
    paths = [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    for path in paths:
        assert not path["path"].startswith(("/admin", "/metrics")), path
        assert path["pathType"] in ("Exact", "Prefix")
        assert path["path"].startswith(("/v1/models", "/v2")), path
        assert path["backend"]["service"]["name"] == "model-gateway"


# -- policy ----------------------------------------------------------------------------------


def _of(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def _deployment(docs: list[Doc], component: str) -> Doc:
    (found,) = [
        d
        for d in _of(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def _check_pod_policy(deployment: Doc) -> None:
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False, name
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True, name
    assert pod_security["runAsUser"] != 0, name
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", name
    for container in pod["containers"]:
        where = f"{name}/{container['name']}"
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"], f"{where}: {probe}"
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, f"{where}: {kind}"
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["runAsNonRoot"] is True, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        assert "privileged" not in security, where
        for env in container.get("env", []):
            if any(
                word in env["name"] for word in ("TOKEN", "PASSWORD", "KEY", "SECRET", "WEBHOOK")
            ):
                assert "secretKeyRef" in env["valueFrom"], (
                    f"{where}: {env['name']} not from a Secret"
                )
        assert not container["image"].endswith(":latest"), where
    if deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway":
        (container,) = pod["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        # liveness and readiness on the health port, which the gateway is told to open
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["GATEWAY_SERVER__HEALTH_PORT"] == str(ports["health"])
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "health", probe
        assert container["startupProbe"]["httpGet"]["port"] == "http"  # open after loading
        assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    if deployment["metadata"]["labels"]["app.kubernetes.io/component"] in ("monitor", "retrain"):
        (container,) = pod["containers"]
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health", f"{name}: {probe}"


def _env_refs(pod: Doc) -> Iterator[tuple[str, str, str, bool]]:
    """(kind, name, key, optional) of every ConfigMap and Secret key the pod reads."""
    for container in pod["containers"]:
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if field in source:
                    ref = source[field]
                    yield kind, ref["name"], ref["key"], bool(ref.get("optional"))
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"], "", False
        if "secret" in volume:
            for item in volume["secret"].get("items", [{"key": ""}]):
                yield "Secret", volume["secret"]["secretName"], item["key"], False
        if "persistentVolumeClaim" in volume:
            yield "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], "", False


def _example_secrets() -> dict[str, dict[str, str]]:
    return {
        doc["metadata"]["name"]: doc["stringData"]
        for doc in _documents(KUBERNETES / "secrets.example.yaml")
    }


def _check_references(deployment: Doc, docs: list[Doc]) -> None:
    """Every ConfigMap key is rendered; every Secret key is in secrets.example.yaml."""
    secrets = _example_secrets()
    for kind, name, key, _optional in _env_refs(deployment["spec"]["template"]["spec"]):
        if kind == "Secret":
            assert name in secrets, f"Secret {name} is not in secrets.example.yaml"
            assert key == "" or key in secrets[name], f"Secret {name} has no key {key}"
            continue
        (found,) = [d for d in _of(docs, kind) if d["metadata"]["name"] == name]
        assert key == "" or key in found["data"], f"{kind} {name} has no key {key}"


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _check_selectors(docs: list[Doc]) -> None:
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in _of(docs, "Deployment")
    }
    ports = {
        d["metadata"]["name"]: {
            p["name"] for c in d["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        for d in _of(docs, "Deployment")
    }
    for deployment in _of(docs, "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert _matches(selector, pods[deployment["metadata"]["name"]])
    for service in _of(docs, "Service"):
        targets = [n for n, labels in pods.items() if _matches(service["spec"]["selector"], labels)]
        assert len(targets) == 1, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports[targets[0]]
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for doc in _of(docs, kind):
            key = "podSelector" if kind == "NetworkPolicy" else "selector"
            selector = doc["spec"][key]["matchLabels"]
            targets = [n for n, labels in pods.items() if _matches(selector, labels)]
            assert len(targets) == 1, doc["metadata"]["name"]
            for rule in doc["spec"].get("ingress", []):
                assert {p["port"] for p in rule["ports"]} <= ports[targets[0]]
    (hpa,) = _of(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] in pods
    assert hpa["spec"]["minReplicas"] >= 2, "one replica could not be drained by the PDB"
    (monitor,) = _of(docs, "ServiceMonitor")
    scraped = [
        s
        for s in _of(docs, "Service")
        if _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert sorted(s["metadata"]["name"] for s in scraped) == [
        "model-gateway",
        "model-gateway-monitor",
        "model-gateway-retrain",
    ]
    for service in scraped:
        names = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= names


def _check_service_monitor(doc: Doc) -> None:
    """The Prometheus Operator's CRD, which kubernetes-validate has no schema for."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "ServiceMonitor"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(doc["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    assert doc["spec"]["selector"]["matchLabels"]
    for endpoint in doc["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["path"] == "/metrics"


# -- the configs as the pods see them -------------------------------------------------------


def _settings(
    docs: list[Doc], component: str
) -> GatewaySettings | MonitorSettings | RetrainSettings:
    """The component's settings from its rendered config file and container environment
    (Secret values from secrets.example.yaml), loaded by the component's own loader."""
    pod = _deployment(docs, component)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_arg = container["command"][container["command"].index("--config") + 1]
    files = _mounted_files(pod, docs)
    env = _environment(container, docs)
    return _load(component, files[config_arg], env)


def _mounted_files(pod: Doc, docs: list[Doc]) -> dict[str, str]:
    files: dict[str, str] = {}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in pod["containers"][0]["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            (config_map,) = [
                d
                for d in _of(docs, "ConfigMap")
                if d["metadata"]["name"] == volume["configMap"]["name"]
            ]
            for key, text in config_map["data"].items():
                files[f"{mount['mountPath']}/{key}"] = text
    return files


def _environment(container: Doc, docs: list[Doc]) -> dict[str, str]:
    secrets = _example_secrets()
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        source = entry["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            (config_map,) = [
                d for d in _of(docs, "ConfigMap") if d["metadata"]["name"] == ref["name"]
            ]
            env[entry["name"]] = config_map["data"][ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
        elif "fieldRef" in source:
            env[entry["name"]] = "model-gateway-0"
    return env


def _load(
    component: str, text: str, env: dict[str, str]
) -> GatewaySettings | MonitorSettings | RetrainSettings:
    with tempfile.TemporaryDirectory() as directory, pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith(("GATEWAY_", "MONITOR_", "RETRAIN_")):
                patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        path = Path(directory) / "config.yaml"
        path.write_text(text)
        if component == "gateway":
            return load_settings(path)
        if component == "retrain":
            return load_retrain_settings(path)
        return load_monitor_settings(path)


def _mounts(pod: Doc) -> list[tuple[Path, Doc, bool]]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return [
        (Path(m["mountPath"]), volumes[m["name"]], bool(m.get("readOnly")))
        for m in pod["containers"][0]["volumeMounts"]
    ]


def _on_volume(pod: Doc, path: Path) -> bool:
    return any(path.is_relative_to(mount) for mount, _, _ in _mounts(pod))


def _on_persistent_volume(pod: Doc, path: Path) -> bool:
    return any(
        path.is_relative_to(mount) and not read_only and "persistentVolumeClaim" in volume
        for mount, volume, read_only in _mounts(pod)
    )


def _on_writable_volume(pod: Doc, path: Path) -> bool:
    return any(
        path.is_relative_to(mount)
        and not read_only
        and ("emptyDir" in volume or "persistentVolumeClaim" in volume)
        for mount, volume, read_only in _mounts(pod)
    )
