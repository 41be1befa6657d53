"""The series names the gateway, the monitor and the retraining worker export, and the metric
names a PromQL expression uses, so dashboards and rules can be checked against the code."""

from __future__ import annotations

import json
import re

from prometheus_client import CollectorRegistry

from deploy.grafana.dashboard import OUTPUT
from gateway.metrics import GatewayMetrics
from monitors.metrics import MonitorMetrics
from monitors.performance_metrics import PerformanceMetrics
from monitors.retrain.metrics import RetrainMetrics

__all__ = ["dashboard_queries", "exported_series", "metric_names"]

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def exported_series() -> set[str]:
    """Every series name on the gateway's, the monitor's and the worker's /metrics."""
    monitor = MonitorMetrics(CollectorRegistry())
    PerformanceMetrics(monitor.registry)  # the ground-truth side, on the monitor's registry
    registries = (
        GatewayMetrics(CollectorRegistry(), "test").registry,
        monitor.registry,
        RetrainMetrics(CollectorRegistry()).registry,
    )
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in _SUFFIXES[family.type]
    }


def metric_names(expr: str) -> set[str]:
    """The gateway's, monitor's and worker's metric names in a PromQL expression (label values and
    Grafana variables, in quotes, do not count)."""
    unquoted = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\b(?:gateway|monitor|retrain)_[a-z0-9_]+\b", unquoted))


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the committed dashboard (panels and variables)."""
    board = json.loads(OUTPUT.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return exprs + [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
