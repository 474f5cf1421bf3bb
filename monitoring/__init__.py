"""Monitoring: drift of stream features, served scores and outcomes, with dashboards and alerts.

Public API (what DAGs, the CLI and the demo call)::

    drift_report(reference, current, ...) -> DriftVerdict   # two frames of features
    check(settings, events=..., items=...) -> DriftVerdict   # one monitor run, recorded + alerted
    monitor_offline_log(settings, now_ms=...) -> DriftVerdict  # the scheduled check (DAG, CLI)
    score_features(bundle, events, centroid=...)             # champion scores per window
    window_features(events, items, popularity_rank=...)      # per-event monitoring features
    ensure_project(settings), record_snapshot(settings, snapshot)
    send_alert(settings, record)
    COVERAGE_MODES                                           # offline-log coverage modes
    experiment_status(settings) -> dict                      # the A/B readout, per variant
    readout(champion, challenger, ...) -> Readout            # an experiment's statistics
    readout_for(settings, champion, challenger), verdict(...), Arm(trials, successes)
    decide_experiment(settings) -> dict                      # promote / archive / alert on it

The experiment readout and its statistics live in ``rtrec.serving`` (the service's
``GET /experiments`` answers them, and serving sits below monitoring) and are re-exported
here for the CLI and the DAGs.

Imports are lazy (PEP 562): ``import rtrec.monitoring`` loads neither Evidently nor pandas,
so the CLI's ``--help`` stays fast.
"""

from rtrec.lazy import lazy_exports

_EXPORTS = {
    "alert_record": "rtrec.monitoring.alerts",
    "send_alert": "rtrec.monitoring.alerts",
    "PANEL_TITLES": "rtrec.monitoring.dashboards",
    "ensure_project": "rtrec.monitoring.dashboards",
    "panel_titles": "rtrec.monitoring.dashboards",
    "record_snapshot": "rtrec.monitoring.dashboards",
    "Arm": "rtrec.serving",
    "experiment_status": "rtrec.serving",
    "Readout": "rtrec.serving",
    "readout": "rtrec.serving",
    "readout_for": "rtrec.serving",
    "verdict": "rtrec.serving",
    "decide_experiment": "rtrec.monitoring.experiment_decision",
    "DriftVerdict": "rtrec.monitoring.drift",
    "drift_report": "rtrec.monitoring.drift",
    "popularity_ranks": "rtrec.monitoring.drift",
    "window_features": "rtrec.monitoring.drift",
    "COVERAGE_MODES": "rtrec.monitoring.monitor",
    "MonitorConfig": "rtrec.monitoring.monitor",
    "check": "rtrec.monitoring.monitor",
    "monitor_offline_log": "rtrec.monitoring.monitor",
    "outcome_counts": "rtrec.monitoring.monitor",
    "split_windows": "rtrec.monitoring.monitor",
    "SCORE_COLUMNS": "rtrec.monitoring.scores",
    "score_features": "rtrec.monitoring.scores",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
