"""The Evidently workspace: one project whose dashboard on-call people read.

Every check adds its snapshot; the panels plot drift share over time, per-feature drift,
score drift and the outcome rate straight from the snapshots' metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rtrec.config import Settings

logger = logging.getLogger(__name__)

PROJECT_NAME = "rtrec drift"
PANEL_TITLES = (
    "Drift share (all monitored columns)",
    "Drifted columns",
    "Per-feature drift",
    "Score drift",
    "Outcome rate (clicks per recommendation)",
)
FEATURE_COLUMNS = ("item_pop_rank", "event_type", "category")
SCORE_COLUMNS = ("score_top1", "score_mean", "score_centroid_sim")
"""Same names as :data:`monitoring.scores.SCORE_COLUMNS` (kept here: no numpy import)."""


def _workspace(settings: Settings) -> Any:
    from evidently.ui.workspace import Workspace

    path = Path(str(settings.monitoring.workspace))
    path.mkdir(parents=True, exist_ok=True)
    return Workspace.create(str(path))


def _add_panels(project: Any) -> None:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import counter_panel, line_plot_panel

    def drift(column: str) -> PanelMetric:
        return PanelMetric(metric="ValueDrift", metric_labels={"column": column}, legend=column)

    # add_panel without tab=: passing an existing tab adds the panel twice (STACK_NOTES).
    project.dashboard.add_panel(
        line_plot_panel(
            title=PANEL_TITLES[0],
            values=[
                PanelMetric(
                    metric="DriftedColumnsCount",
                    metric_labels={"value_type": "share"},
                    legend="share",
                )
            ],
        )
    )
    project.dashboard.add_panel(
        counter_panel(
            title=PANEL_TITLES[1],
            values=[
                PanelMetric(metric="DriftedColumnsCount", metric_labels={"value_type": "count"})
            ],
            size="half",
        )
    )
    project.dashboard.add_panel(
        line_plot_panel(title=PANEL_TITLES[2], values=[drift(c) for c in FEATURE_COLUMNS])
    )
    project.dashboard.add_panel(
        line_plot_panel(title=PANEL_TITLES[3], values=[drift(c) for c in SCORE_COLUMNS])
    )
    project.dashboard.add_panel(
        line_plot_panel(
            title=PANEL_TITLES[4],
            values=[
                PanelMetric(
                    metric="MeanValue", metric_labels={"column": "outcome_rate"}, legend="rate"
                )
            ],
        )
    )


def ensure_project(settings: Settings) -> tuple[Any, Any]:
    """The workspace and its drift project (created with its panels on first use)."""
    ws = _workspace(settings)
    for project in ws.list_projects():
        if project.name == PROJECT_NAME:
            return ws, ws.get_project(project.id)
    project = ws.create_project(PROJECT_NAME)
    project.description = "Feature, score and outcome drift of the rtrec recommender"
    project.save()
    _add_panels(project)
    logger.info("created Evidently project", extra={"project_id": str(project.id)})
    return ws, project


def record_snapshot(settings: Settings, snapshot: Any) -> str:
    """Add one check's snapshot to the project; returns the project id."""
    ws, project = ensure_project(settings)
    ws.add_run(project.id, snapshot, include_data=False)
    return str(project.id)


def panel_titles(settings: Settings) -> list[str]:
    _, project = ensure_project(settings)
    return [p.title for p in project.dashboard.model().panels]
