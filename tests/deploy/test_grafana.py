"""deploy/grafana: the committed dashboard is the generator's, and it queries real metrics."""

from __future__ import annotations

import json
from typing import Any

from deploy.grafana.dashboard import OUTPUT, render
from tests.deploy._metrics import dashboard_queries, exported_series, metric_names

# What the dashboard must show (issue #16): one metric each, at least.
COVERED = {
    "gateway_requests_total",
    "gateway_request_duration_seconds_bucket",
    "gateway_batch_rows_bucket",
    "gateway_queue_wait_seconds_bucket",
    "gateway_queue_depth",
    "gateway_feature_log_records_total",
    "gateway_feature_log_dropped_records_total",
    "gateway_feature_log_spool_bytes",
    "gateway_canary_events_total",
    "gateway_shadow_rows_total",
    "monitor_lag_records",
    "monitor_feature_statistic",
    "monitor_feature_psi",
    "monitor_feature_neg_log10_p_value",
    "monitor_webhook_deliveries_total",
    # issue #14: realized and estimated performance per variant, the join, A/B verdicts
    "monitor_performance_metric",
    "monitor_performance_label_coverage",
    "monitor_join_items_total",
    "monitor_ab_difference",
    "monitor_ab_decision",
    # issue #15: the retraining worker
    "retrain_jobs",
    "retrain_job_transitions_total",
    "retrain_job_state_duration_seconds_bucket",
    "retrain_events_total",
}
# The raw p-value underflows to 0 on large windows and reads as a flat line near 0: plotted as
# -log10 p instead.
NOT_PLOTTED = {"monitor_feature_p_value"}


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(OUTPUT.read_text())
    return loaded


def test_committed_dashboard_is_what_the_generator_builds() -> None:
    assert OUTPUT.read_text() == render(), "run: python -m deploy.grafana.dashboard"


def test_every_query_names_metrics_the_gateway_the_monitor_or_the_worker_exports() -> None:
    exported = exported_series()
    used: set[str] = set()
    for expr in dashboard_queries():
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, f"{expr}: unknown {sorted(names - exported)}"
        used |= names
    assert used >= COVERED, sorted(COVERED - used)
    assert not used & NOT_PLOTTED


def test_panels_have_unique_ids_a_datasource_and_do_not_overlap() -> None:
    panels = _dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, panel["title"]
        cells |= area
