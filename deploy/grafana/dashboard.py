"""The Grafana dashboard of the gateway and the monitor (drift, ground truth, A/B verdicts), built with Grafana's typed builders
(grafana-foundation-sdk) and written to ``deploy/grafana/model-gateway.json``:

    python -m deploy.grafana.dashboard

A panel is one entry in ``ROWS``: ``chart(title, unit, (promql, legend), ...)``. A test checks
that the committed JSON is what this module builds and that every metric a query names is one
the gateway or the monitor exports.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

__all__ = ["OUTPUT", "ROWS", "Chart", "build", "chart", "render"]

OUTPUT = Path(__file__).with_name("model-gateway.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label matchers the panels share: the endpoints (gateway) and the models (monitor) picked above.
EP = 'model=~"$endpoint"'
MON = 'model=~"$model"'
R = "$__rate_interval"


@dataclass(frozen=True)
class Chart:
    """A time-series panel: its title, its unit (Grafana's unit ids) and its queries."""

    title: str
    unit: str
    queries: tuple[tuple[str, str], ...]
    width: int = 12


def chart(title: str, unit: str, *queries: tuple[str, str], width: int = 12) -> Chart:
    """A panel of ``ROWS``: ``queries`` are (PromQL, legend) pairs."""
    return Chart(title, unit, queries, width)


def _quantiles(
    metric: str, by: str, matchers: str, qs: tuple[float, ...] = (0.5, 0.99)
) -> tuple[tuple[str, str], ...]:
    """p50 and p99 (or ``qs``) of a histogram, per ``by``."""
    legend = " ".join("{{" + label.strip() + "}}" for label in by.split(","))
    return tuple(
        (
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{matchers}}}[{R}])))",
            f"p{round(q * 100)} {legend}",
        )
        for q in qs
    )


ROWS: list[tuple[str, list[Chart]]] = [
    (
        "Traffic",
        [
            chart("Requests by endpoint, variant and outcome", "reqps", (f"sum by (model, variant, outcome) (rate(gateway_requests_total{{{EP}}}[{R}]))", "{{model}}/{{variant}} {{outcome}}")),
            chart("Latency p50 and p99 by endpoint and variant", "s", *_quantiles("gateway_request_duration_seconds", "model, variant", f'{EP}, outcome="success"')),
            chart("Errors and rejections by reason", "reqps", (f'sum by (model, outcome) (rate(gateway_requests_total{{{EP}, outcome!="success"}}[{R}]))', "{{model}} {{outcome}}")),
            chart("Server-side error ratio (error, timeout, rejected)", "percentunit", (f'sum by (model) (rate(gateway_requests_total{{{EP}, outcome=~"error|timeout|rejected"}}[{R}])) / sum by (model) (rate(gateway_requests_total{{{EP}}}[{R}]))', "{{model}}")),
        ],
    ),
    (
        "Batching",
        [
            chart("Rows per batch p50 and p99", "short", *_quantiles("gateway_batch_rows", "model, variant", EP)),
            chart("Queue wait p50 and p99", "s", *_quantiles("gateway_queue_wait_seconds", "model, variant", EP)),
            chart("Queue depth (requests waiting)", "short", (f"sum by (model, variant) (gateway_queue_depth{{{EP}}})", "{{model}}/{{variant}}")),
            chart("Batches by why they closed", "ops", (f"sum by (model, reason) (rate(gateway_batches_total{{{EP}}}[{R}]))", "{{model}} {{reason}}")),
            chart("Inference time per batch p50 and p99", "s", *_quantiles("gateway_inference_duration_seconds", "model, variant", EP)),
            chart("Rows predicted", "cps", (f"sum by (model, variant) (rate(gateway_rows_total{{{EP}}}[{R}]))", "{{model}}/{{variant}}")),
        ],
    ),
    (
        "Feature log",
        [
            chart("Records produced, spooled, replayed and dropped", "cps", (f"sum by (event) (rate(gateway_feature_log_records_total[{R}]))", "{{event}}"), (f"sum by (reason) (rate(gateway_feature_log_dropped_records_total[{R}]))", "dropped {{reason}}")),
            chart("Spool size", "bytes", ("sum by (instance) (gateway_feature_log_spool_bytes)", "{{instance}}")),
            chart("Records dead-lettered (refused by the broker) and oversized", "cps", (f"sum by (reason) (rate(gateway_feature_log_dead_letter_records_total[{R}]))", "dead letter {{reason}}"), (f"sum by (action) (rate(gateway_feature_log_oversized_records_total[{R}]))", "oversized {{action}}")),
            chart("Spooled messages and in-memory queue", "short", ("sum by (instance) (gateway_feature_log_spool_messages)", "spool {{instance}}"), ("sum by (instance) (gateway_feature_log_queue_depth)", "queue {{instance}}")),
        ],
    ),
    (
        "Versions, canaries and shadows",
        [
            chart("Canary events", "short", (f"sum by (model, variant, event) (increase(gateway_canary_events_total{{{EP}}}[{R}]))", "{{model}}/{{variant}} {{event}}")),
            chart("Route changes by actor", "short", (f"sum by (model, actor) (increase(gateway_route_changes_total{{{EP}}}[{R}]))", "{{model}} {{actor}}")),
            chart("Route conflicts, refused control messages, failed audit writes", "short", (f"sum by (model) (increase(gateway_route_conflicts_total{{{EP}}}[{R}]))", "conflict {{model}}"), (f"sum by (reason) (increase(gateway_control_messages_rejected_total[{R}]))", "control refused {{reason}}"), (f"sum (increase(gateway_audit_write_failures_total[{R}]))", "audit write failed")),
            chart("Model versions serving", "short", (f"sum by (model, variant, version) (gateway_model_loaded{{{EP}}})", "{{model}}/{{variant}} v{{version}}")),
            chart("Model loads and swaps", "short", (f"sum by (model, outcome) (increase(gateway_model_loads_total{{{EP}}}[{R}]))", "load {{model}} {{outcome}}"), (f"sum by (model) (increase(gateway_model_swaps_total{{{EP}}}[{R}]))", "swap {{model}}")),
            chart("Shadow agreement (predicted class)", "percentunit", (f'sum by (model, primary, shadow) (rate(gateway_shadow_rows_total{{{EP}, agreement="agree"}}[{R}])) / sum by (model, primary, shadow) (rate(gateway_shadow_rows_total{{{EP}}}[{R}]))', "{{model}} {{primary}} vs {{shadow}}")),
            chart("Shadow copies by outcome", "ops", (f"sum by (model, shadow, outcome) (rate(gateway_shadow_requests_total{{{EP}}}[{R}]))", "{{model}}/{{shadow}} {{outcome}}")),
        ],
    ),
    (
        "Drift monitor",
        [
            chart("Monitor lag (records behind the log)", "short", ("sum by (instance) (monitor_lag_records)", "{{instance}}")),
            chart("Records consumed and skipped", "cps", (f"sum by (model, version) (rate(monitor_records_total{{{MON}}}[{R}]))", "{{model}} v{{version}}"), (f"sum by (reason) (rate(monitor_skipped_records_total[{R}]))", "skipped {{reason}}")),
            chart("Windows closed by status", "short", (f"sum by (model, version, status) (increase(monitor_windows_total{{{MON}}}[{R}]))", "{{model}} v{{version}} {{status}}")),
            chart("Drift decisions", "short", (f"sum by (model, version) (increase(monitor_drift_decisions_total{{{MON}}}[{R}]))", "{{model}} v{{version}}")),
            chart("Feature drift statistic (KS D or Cramer's V), latest window", "short", (f"monitor_feature_statistic{{{MON}}}", "{{model}} v{{version}} {{feature}}"), width=24),
            chart("Feature PSI and its threshold, latest window", "short", (f"monitor_feature_psi{{{MON}}}", "{{model}} v{{version}} {{feature}}"), (f"monitor_feature_psi_threshold{{{MON}}}", "threshold {{model}} v{{version}} {{feature}}")),
            chart("Feature drift evidence, -log10 p, latest window (higher: stronger)", "short", (f"monitor_feature_neg_log10_p_value{{{MON}}}", "{{model}} v{{version}} {{feature}}")),
            chart("Features flagged as drifted, latest window", "short", (f"sum by (model, version) (monitor_feature_drifted{{{MON}}})", "{{model}} v{{version}}")),
            chart("Webhook deliveries", "short", (f"sum by (target, status) (increase(monitor_webhook_deliveries_total[{R}]))", "{{target}} {{status}}")),
            chart("Partitions assigned", "short", ("sum by (instance) (monitor_assigned_partitions)", "{{instance}}")),
            chart("State changelog: bytes written", "Bps", (f"sum by (instance) (rate(monitor_changelog_written_bytes_total[{R}]))", "{{instance}}")),
            chart("Partitions taken on by state source; changelog errors", "short", (f"sum by (outcome) (increase(monitor_state_restores_total[{R}]))", "{{outcome}}"), (f"sum by (instance, operation) (increase(monitor_changelog_errors_total[{R}]))", "{{instance}} {{operation}} errors")),
        ],
    ),
    (
        "Ground truth and A/B",
        [
            chart("Realized and estimated $metric per variant, latest judged window", "short", (f'monitor_performance_metric{{{MON}, metric=~"$metric", bound="value"}}', "{{model}}/{{variant}} v{{version}} {{metric}} {{kind}}"), width=24),
            chart("Realized $metric per variant with its interval", "short", (f'monitor_performance_metric{{{MON}, metric=~"$metric", kind="realized"}}', "{{model}}/{{variant}} v{{version}} {{metric}} {{bound}}")),
            chart("Estimated $metric per variant with its interval (before labels)", "short", (f'monitor_performance_metric{{{MON}, metric=~"$metric", kind="estimated"}}', "{{model}}/{{variant}} v{{version}} {{metric}} {{bound}}")),
            chart("Label coverage per variant", "percentunit", (f"monitor_performance_label_coverage{{{MON}}}", "{{model}}/{{variant}} v{{version}}")),
            chart("Join: items by outcome", "cps", (f"sum by (outcome) (rate(monitor_join_items_total[{R}]))", "{{outcome}}"), (f"sum by (reason) (rate(monitor_performance_skipped_total[{R}]))", "skipped {{reason}}")),
            chart("A/B difference b - a with its always-valid interval", "short", (f"monitor_ab_difference{{{MON}}}", "{{model}} {{b}} - {{a}} {{metric}} {{bound}}")),
            chart("A/B decision and labelled rows still needed", "short", (f"monitor_ab_decision{{{MON}}} == 1", "{{model}} {{a}} vs {{b}}: {{decision}}"), (f"monitor_ab_samples_needed{{{MON}}}", "{{model}} {{a}} vs {{b}} rows needed")),
            chart("Performance degradations", "short", (f"sum by (model, version, variant) (increase(monitor_performance_degradations_total{{{MON}}}[{R}]))", "{{model}}/{{variant}} v{{version}}")),
            chart("Ground-truth partitions assigned", "short", ("sum by (instance) (monitor_performance_assigned_partitions)", "{{instance}}")),
        ],
    ),
    (
        "Retraining",
        [
            chart("Retraining jobs by state", "short", ("sum by (state) (retrain_jobs)", "{{state}}")),
            chart("Jobs entering each state", "ops", (f"sum by (model, state) (rate(retrain_job_transitions_total[{R}]))", "{{model}} {{state}}")),
            chart("Time in state p50 and p95", "s", *_quantiles("retrain_job_state_duration_seconds", "state", "", (0.5, 0.95))),
            chart("Events received by outcome", "ops", (f"sum by (outcome) (rate(retrain_events_total[{R}]))", "{{outcome}}")),
        ],
    ),
]  # fmt: skip


def _panel(spec: Chart, panel_id: int) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .id(panel_id)
        .title(spec.title)
        .unit(spec.unit)
        .datasource(DATASOURCE)
        .height(8)
        .span(spec.width)
        .fill_opacity(10)
        .legend(
            common.VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
        )
    )
    for i, (expr, legend) in enumerate(spec.queries):
        panel = panel.with_target(
            prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
        )
    return panel


def _label_variable(name: str, label: str, query: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def build() -> dashboard.Dashboard:
    """The dashboard, row by row from ``ROWS``."""
    board = (
        dashboard.Dashboard("Model gateway")
        .uid("model-gateway")
        .description(
            "Serving, batching, feature log, traffic changes, drift monitor, ground truth and A/B, "
            "retraining."
        )
        .tags(["model-gateway"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
        .with_variable(
            _label_variable("endpoint", "Endpoint", "label_values(gateway_requests_total, model)")
        )
        .with_variable(
            _label_variable(
                "model", "Monitored model", "label_values(monitor_records_total, model)"
            )
        )
        .with_variable(
            _label_variable(
                "metric", "Performance metric", "label_values(monitor_performance_metric, metric)"
            )
        )
    )
    ids = iter(range(1, 1000))
    for title, charts in ROWS:
        board = board.with_row(dashboard.Row(title).id(next(ids)))
        for spec in charts:
            board = board.with_panel(_panel(spec, next(ids)))
    return board


def render() -> str:
    """The dashboard's JSON, as committed."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
