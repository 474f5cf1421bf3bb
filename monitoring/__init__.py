"""Monitoring: drift of stream features, served scores and outcomes, with dashboards and alerts.

Public API (what DAGs, the CLI and the demo call)::

    drift_report(reference, current, ...) -> DriftVerdict   # two frames of features
    check(settings, events=..., items=...) -> DriftVerdict   # one monitor run, recorded + alerted
    monitor_offline_log(settings, now_ms=...) -> DriftVerdict  # the scheduled check (DAG, CLI)
    score_features(bundle, events, centroid=...)             # champion scores per window
    window_features(events, items, popularity_rank=...)      # per-event monitoring features
    ensure_project(settings), record_snapshot(settings, snapshot)
    send_alert(settings, record)
"""

from rtrec.monitoring.alerts import alert_record, send_alert
from rtrec.monitoring.dashboards import PANEL_TITLES, ensure_project, panel_titles, record_snapshot
from rtrec.monitoring.drift import DriftVerdict, drift_report, popularity_ranks, window_features
from rtrec.monitoring.monitor import (
    MonitorConfig,
    check,
    monitor_offline_log,
    outcome_counts,
    split_windows,
)
from rtrec.monitoring.scores import SCORE_COLUMNS, score_features

__all__ = [
    "PANEL_TITLES",
    "SCORE_COLUMNS",
    "DriftVerdict",
    "MonitorConfig",
    "alert_record",
    "check",
    "drift_report",
    "ensure_project",
    "monitor_offline_log",
    "outcome_counts",
    "panel_titles",
    "popularity_ranks",
    "record_snapshot",
    "score_features",
    "send_alert",
    "split_windows",
    "window_features",
]
