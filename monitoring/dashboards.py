"""The Evidently workspace: one project whose dashboard on-call people read.

Every monitor run records one snapshot, judged or not, so the dashboard never goes
silent about a check that ran: a window too small to judge shows as a point at 0 on the
"judged" line, with its reason in the snapshot's tags (the chart's tooltip) and in the
"Last recorded check" panel's text.

Evidently 0.7's UI draws what a snapshot's metrics hold and nothing else: a line chart
has no threshold lines and no fixed axis range, and its y axis spans only the plotted
values (one stored 0.5 gives a degenerate axis with a single tick). So each run also
stores its check-level values as ``MeanValue`` metrics of one-row columns named
``check_*`` (verdict, window sizes, drift share, each column's threshold, the outcome
rates) next to Evidently's own drift metrics in the same snapshot: thresholds plot as
flat lines beside the scores they judge, and the drift-share chart carries lines at 0
and 1 so its axis is the whole share range.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtrec.config import Settings

if TYPE_CHECKING:
    from rtrec.monitoring.drift import DriftVerdict

logger = logging.getLogger(__name__)

PROJECT_NAME = "rtrec drift"
LAST_CHECK = "Last recorded check"
PANEL_TITLES = (
    LAST_CHECK,
    "Last check: window rows",
    "Verdict per check (1 = yes, 0 = no)",
    "Window sizes (rows)",
    "Drift share of monitored columns",
    "Feature drift vs per-column thresholds",
    "Score drift vs per-column thresholds",
    "Outcome rate (clicks per view)",
)
FEATURE_COLUMNS = ("item_pop_rank", "event_type", "category")
SCORE_COLUMNS = ("score_top1", "score_mean", "score_centroid_sim")
"""Same names as :data:`rtrec.monitoring.scores.SCORE_COLUMNS` (kept here: no numpy import)."""
CHECK_TAG = "monitor check"
"""Tag on every recorded check's snapshot; panels read only those snapshots."""


def threshold_column(column: str) -> str:
    """The one-row column that stores ``column``'s drift threshold in a run's snapshot."""
    return f"check_threshold__{column}"


def _workspace(settings: Settings) -> Any:
    from evidently.ui.workspace import Workspace

    path = Path(str(settings.monitoring.workspace))
    path.mkdir(parents=True, exist_ok=True)
    return Workspace.create(str(path))


def _check_metric(column: str, legend: str) -> Any:
    """A value the check recorded about itself (rows, share, thresholds), as a series."""
    from evidently.sdk.models import PanelMetric

    return PanelMetric(
        metric="MeanValue", metric_labels={"column": column}, legend=legend, tags=[CHECK_TAG]
    )


def _drift_metric(column: str) -> Any:
    """A column's drift score, as a series."""
    from evidently.sdk.models import PanelMetric

    return PanelMetric(
        metric="ValueDrift", metric_labels={"column": column}, legend=column, tags=[CHECK_TAG]
    )


def _against_thresholds(columns: tuple[str, ...]) -> list[Any]:
    """Each column's drift score, then each column's threshold (the same order)."""
    scores = [_drift_metric(c) for c in columns]
    return scores + [_check_metric(threshold_column(c), f"{c} threshold") for c in columns]


def _panels() -> list[Any]:
    """The dashboard's panels, in order (titles: :data:`PANEL_TITLES`)."""
    from evidently.sdk.panels import counter_panel, line_plot_panel, text_panel

    check, against_thresholds = _check_metric, _against_thresholds
    t = PANEL_TITLES
    return [
        text_panel(t[0], "No check recorded yet.", size="half"),
        # Short legends: without one the UI prints the metric's type and every parameter
        # in a <pre> that does not wrap, and the text is cut off.
        counter_panel(
            t[1],
            [
                check("check_reference_rows", "reference"),
                check("check_current_rows", "current"),
            ],
            description="Evidently's counter shows 0 as 'no value'.",
            size="half",
        ),
        line_plot_panel(
            t[2],
            [
                check("check_judged", "judged (0 = not judged)"),
                check("check_drifted", "drifted"),
            ],
            description="A point at 0 on 'judged' is a check that ran and could not judge; "
            "hover it for the reason.",
            size="half",
        ),
        line_plot_panel(
            t[3],
            [
                check("check_reference_rows", "reference window"),
                check("check_current_rows", "current window"),
            ],
            size="half",
        ),
        line_plot_panel(
            t[4],
            [
                check("check_drift_share", "drift share"),
                check("check_drift_share_threshold", "threshold"),
                check("check_share_floor", "none drifted (0)"),
                check("check_share_ceiling", "all drifted (1)"),
            ],
        ),
        line_plot_panel(t[5], against_thresholds(FEATURE_COLUMNS)),
        line_plot_panel(t[6], against_thresholds(SCORE_COLUMNS)),
        line_plot_panel(
            t[7],
            [
                check("check_outcome_rate_reference", "reference window"),
                check("check_outcome_rate_current", "current window"),
            ],
        ),
    ]


def _add_panels(project: Any) -> None:
    # add_panel without tab=: passing an existing tab adds the panel twice.
    for panel in _panels():
        project.dashboard.add_panel(panel)


def ensure_project(settings: Settings) -> tuple[Any, Any]:
    """The workspace and its drift project (created with its panels on first use; a
    project whose panels are not this version's gets this version's panels)."""
    from evidently.sdk.models import DashboardModel

    ws = _workspace(settings)
    for project in ws.list_projects():
        if project.name == PROJECT_NAME:
            found = ws.get_project(project.id)
            if [p.title for p in ws.get_dashboard(found.id).panels] != list(PANEL_TITLES):
                ws.save_dashboard(found.id, DashboardModel(tabs=[], panels=[]))
                _add_panels(found)
                logger.info("replaced the drift project's panels with this version's")
            return ws, found
    project = ws.create_project(PROJECT_NAME)
    project.description = "Feature, score and outcome drift of the rtrec recommender"
    project.save()
    _add_panels(project)
    logger.info("created Evidently project", extra={"project_id": str(project.id)})
    return ws, project


def check_values(
    verdict: DriftVerdict, *, thresholds: dict[str, float], share_threshold: float
) -> dict[str, float]:
    """The run-level values one check stores (``check_*`` columns; absent = not known).

    ``thresholds``: each monitored column's drift threshold (a not-judged check has no
    column results but its thresholds are still drawn).
    """
    values: dict[str, float] = {
        "check_judged": float(verdict.judged),
        "check_reference_rows": float(verdict.reference_rows),
        "check_current_rows": float(verdict.current_rows),
        "check_drift_share_threshold": float(share_threshold),
        "check_share_floor": 0.0,
        "check_share_ceiling": 1.0,
    }
    if verdict.judged:
        values["check_drifted"] = float(verdict.drifted)
        values["check_drift_share"] = float(verdict.drift_share)
    merged = dict(thresholds) | {c.column: c.threshold for c in verdict.columns}
    values |= {threshold_column(c): float(t) for c, t in merged.items()}
    if verdict.outcome is not None:
        values["check_outcome_rate_reference"] = float(verdict.outcome.reference_rate)
        values["check_outcome_rate_current"] = float(verdict.outcome.current_rate)
    return values


def check_snapshot(
    verdict: DriftVerdict, *, thresholds: dict[str, float], share_threshold: float
) -> Any:
    """One snapshot for one monitor run: Evidently's drift metrics when the check was
    judged, plus the run-level ``check_*`` values, tagged with the verdict's status."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue

    values = check_values(verdict, thresholds=thresholds, share_threshold=share_threshold)
    frame = pd.DataFrame({k: [v] for k, v in values.items()})
    end_ms = (verdict.windows or {}).get("current", [None, None])[1]
    timestamp = (
        datetime.fromtimestamp(end_ms / 1000, tz=UTC).replace(tzinfo=None)
        if end_ms is not None
        else None
    )
    run = Report([MeanValue(column=c) for c in frame.columns]).run(
        current_data=Dataset.from_pandas(
            frame, data_definition=DataDefinition(numerical_columns=list(frame.columns))
        ),
        reference_data=None,
        timestamp=timestamp,
    )
    snapshot = verdict.snapshot
    if snapshot is not None:
        # One snapshot per run (one point per run on every chart, a click opens
        # Evidently's drift report): the check values join the drift report's results.
        snapshot._metrics.update(run._metrics)
        snapshot._top_level_metrics = [*snapshot._top_level_metrics, *run._top_level_metrics]
        snapshot._widgets = [*snapshot._widgets, *run._widgets]
    else:
        snapshot = run
    snapshot._tags = [CHECK_TAG, verdict.status, verdict.summary[:200]]
    snapshot._metadata = {
        "status": verdict.status,
        "summary": verdict.summary,
        "reference_rows": str(verdict.reference_rows),
        "current_rows": str(verdict.current_rows),
    }
    return snapshot


def describe_check(verdict: DriftVerdict) -> str:
    """The "Last recorded check" panel's text: status and reason, windows, data time."""
    windows = verdict.windows or {}
    end = windows.get("current", [None, None])[1]
    when = (
        datetime.fromtimestamp(end / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
        if end is not None
        else "unknown"
    )
    return (
        f"{verdict.summary}. Windows: reference {verdict.reference_rows:,} rows, "
        f"current {verdict.current_rows:,} rows; current window ends {when} (data time)."
    )


def record_check(
    settings: Settings,
    verdict: DriftVerdict,
    *,
    thresholds: dict[str, float],
    share_threshold: float | None = None,
) -> str:
    """Record one monitor run (judged or not) and show it in "Last recorded check";
    returns the project id."""
    ws, project = ensure_project(settings)
    share = (
        settings.monitoring.drift_share_threshold if share_threshold is None else share_threshold
    )
    snapshot = check_snapshot(verdict, thresholds=thresholds, share_threshold=share)
    ws.add_run(project.id, snapshot, include_data=False)
    dashboard = ws.get_dashboard(project.id)
    for panel in dashboard.panels:
        if panel.title == LAST_CHECK:
            panel.subtitle = describe_check(verdict)
    ws.save_dashboard(project.id, dashboard)
    return str(project.id)


def record_snapshot(settings: Settings, snapshot: Any) -> str:
    """Add a ready-made snapshot to the project (it shows on the panels only when tagged
    :data:`CHECK_TAG` with ``check_*`` values: use :func:`record_check`); returns the
    project id."""
    ws, project = ensure_project(settings)
    ws.add_run(project.id, snapshot, include_data=False)
    return str(project.id)


def panel_titles(settings: Settings) -> list[str]:
    _, project = ensure_project(settings)
    return [p.title for p in project.dashboard.model().panels]
