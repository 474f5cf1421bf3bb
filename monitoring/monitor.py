"""One monitor run: window the events, judge drift, record the snapshot, alert.

The reference is the ``reference_days`` before the latest ``window_days``; popularity
ranks come from the reference, so the latest window is judged by what was popular then.
:func:`monitor_offline_log` is what the Airflow DAG, ``rtrec monitor check`` and the
benchmark call: it reads the stream's offline event log, scores both windows with the
champion when there is one, and measures the outcome rate.

The offline log is written a couple of seconds behind the stream, so a check started
right after events were published could judge a window with part of its events missing.
Before reading the log the check makes sure its watermark covers the window (see
``monitoring.offline_coverage`` in the settings): it waits for it (``wait``), or judges as
of the watermark and says so (``as_of``); the verdict's ``as_of`` records which.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from rtrec.monitoring.alerts import alert_record, send_alert
from rtrec.monitoring.dashboards import FEATURE_COLUMNS, SCORE_COLUMNS, record_check
from rtrec.monitoring.drift import DriftVerdict, drift_report, popularity_ranks, window_features

from rtrec.config import Settings
from rtrec.errors import InvalidInput, Unavailable

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
Outcome = tuple[tuple[int, int], tuple[int, int]]
CoverageMode = Literal["wait", "as_of", "unchecked"]
COVERAGE_MODES: tuple[str, ...] = ("wait", "as_of", "unchecked")


class MonitorConfig(BaseModel):
    """Knobs of a monitor run not (yet) in :class:`rtrec.monitoring_settings.MonitoringSettings`."""

    model_config = ConfigDict(extra="forbid")

    reference_days: float = Field(7.0, gt=0)
    """Length of the reference window that ends where the current window starts."""
    window_days: float = Field(1.0, gt=0)
    """Length of the current (latest) window."""
    column_threshold: float = Field(0.1, gt=0)
    """Distance (Wasserstein in std units / Jensen-Shannon) above which a column drifts."""
    score_threshold: float = Field(0.3, gt=0)
    """Distance above which a ``score_*`` column drifts: a sample of users scored by the
    champion is noisier than the per-event features (stationary synthetic windows reach
    about 0.21; see bench/drift.py)."""
    outcome_z: float = Field(4.0, gt=0)
    """|z| of the two-proportion test above which the outcome rate drifted."""
    score_sample: int = Field(1000, ge=10)
    """Events per window whose users the champion scores for the score-drift columns."""


def split_windows(
    events: pd.DataFrame, *, now_ms: int, reference_days: float, window_days: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, current): ``[now - w - r, now - w)`` and ``[now - w, now)``."""
    if "ts" not in events.columns:
        raise InvalidInput("events frame lacks column 'ts'", field="ts")
    cut = now_ms - int(window_days * DAY_MS)
    start = cut - int(reference_days * DAY_MS)
    ts = events["ts"]
    return events[(ts >= start) & (ts < cut)], events[(ts >= cut) & (ts < now_ms)]


def outcome_counts(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    served: tuple[int, int] | None = None,
) -> Outcome | None:
    """``((clicks, recommendations) reference, (...) current)`` for the outcome test.

    ``served`` is the number of recommendations served in each window when the caller
    knows it (a served log); otherwise views stand in for recommendations shown, so the
    rate is clicks per view.
    """

    def clicks(frame: pd.DataFrame) -> int:
        return int((frame["event_type"] == "click").sum())

    if served is not None:
        n_ref, n_cur = served
    else:
        n_ref = int((reference["event_type"] == "view").sum())
        n_cur = int((current["event_type"] == "view").sum())
    if min(n_ref, n_cur) <= 0:
        return None
    return (min(clicks(reference), n_ref), n_ref), (min(clicks(current), n_cur), n_cur)


def check(
    settings: Settings,
    *,
    events: pd.DataFrame,
    items: pd.DataFrame | None = None,
    now_ms: int | None = None,
    reference_days: float = 7.0,
    window_days: float = 1.0,
    outcome: Outcome | None = None,
    scores: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    record: bool = True,
    alert: bool = True,
    config: MonitorConfig | None = None,
    as_of: dict[str, Any] | None = None,
) -> DriftVerdict:
    """Run one drift check over an events frame (columns user_id, item_id, event_type, ts).

    ``now_ms`` defaults to the newest event's time (replays run in the past).
    ``scores`` optionally adds served-score columns (``score_*``) for both windows.
    ``as_of`` (what the events were read as of) is set on the verdict before it is
    alerted, default ``{"mode": "given"}``.
    """
    cfg = config or MonitorConfig(reference_days=reference_days, window_days=window_days)
    if now_ms is None:
        now_ms = int(events["ts"].max()) + 1 if len(events) else int(time.time() * 1000)
    reference, current = split_windows(
        events, now_ms=now_ms, reference_days=cfg.reference_days, window_days=cfg.window_days
    )
    ref_f, cur_f = _window_frames(reference, current, items, scores)
    verdict = drift_report(
        ref_f,
        cur_f,
        drift_share_threshold=settings.monitoring.drift_share_threshold,
        column_threshold=cfg.column_threshold,
        score_threshold=cfg.score_threshold,
        outcome=outcome,
        outcome_z=cfg.outcome_z,
        # Naive UTC: the dashboard's time axis is the data's time, not the check's.
        timestamp=datetime.fromtimestamp(now_ms / 1000, tz=UTC).replace(tzinfo=None),
    )
    verdict.as_of = as_of or {"mode": "given", "note": "events given by the caller"}
    cut = now_ms - int(cfg.window_days * DAY_MS)
    verdict.windows = {
        "reference": [cut - int(cfg.reference_days * DAY_MS), cut],
        "current": [cut, now_ms],
    }
    if record:  # judged or not: a check that ran must show on the dashboard
        thresholds = {c: cfg.column_threshold for c in FEATURE_COLUMNS}
        if scores is not None:
            thresholds |= {c: cfg.score_threshold for c in SCORE_COLUMNS}
        record_check(settings, verdict, thresholds=thresholds)
    if alert and verdict.drifted:
        _alert(settings, verdict, now_ms)
    return verdict


def _window_frames(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    items: pd.DataFrame | None,
    scores: tuple[pd.DataFrame, pd.DataFrame] | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both windows' feature frames (popularity ranked by the reference), with the
    served-score columns when there are scores."""
    ranks = popularity_ranks(reference)
    ref_f = window_features(reference, items, popularity_rank=ranks)
    cur_f = window_features(current, items, popularity_rank=ranks)
    if scores is not None:
        ref_f = _with_scores(ref_f, scores[0])
        cur_f = _with_scores(cur_f, scores[1])
    return ref_f, cur_f


def _alert(settings: Settings, verdict: DriftVerdict, now_ms: int) -> None:
    """Send the drift alert; an unreachable alert sink is logged, the verdict stands."""
    record_ = alert_record("drift", verdict.to_dict(), window_end_ms=now_ms)
    try:
        send_alert(settings, record_)
    except Unavailable as exc:
        logger.error("%s", exc)


def _with_scores(features: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Score columns are per served request, not per event: sample them to the same length."""
    cols = [c for c in scores.columns if c.startswith("score_")]
    if not cols or not len(scores) or not len(features):
        return features
    sampled = scores[cols].sample(n=len(features), replace=True, random_state=0)
    return pd.concat([features.reset_index(drop=True), sampled.reset_index(drop=True)], axis=1)


def _items(settings: Settings) -> pd.DataFrame | None:
    """The catalog the stream wrote for Feast's item view, when there is one."""
    from rtrec.features import ITEM_META_VIEW, offline_paths

    path = offline_paths(settings.offline_dir)[ITEM_META_VIEW]
    return pd.read_parquet(path, columns=["item_id", "categories"]) if path.is_file() else None


def monitor_offline_log(
    settings: Settings,
    *,
    events: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    now_ms: int | None = None,
    reference_days: float | None = None,
    window_days: float | None = None,
    scores: bool = True,
    bundle: object | None = None,
    alert: bool = True,
    record: bool = True,
    config: MonitorConfig | None = None,
    coverage: CoverageMode | None = None,
    wait_s: float | None = None,
) -> DriftVerdict:
    """The scheduled check: offline event log -> features, champion scores, outcome rate.

    ``events`` / ``items`` default to the offline log and catalog under
    ``settings.offline_dir``; ``bundle`` to the registered champion (none: feature and
    outcome drift only). Reading the log, ``coverage`` / ``wait_s`` (default
    ``settings.monitoring.offline_coverage`` / ``offline_wait_s``) say how the check makes
    sure it holds the windows (module docstring); waiting in vain raises
    :class:`rtrec.errors.Unavailable` naming what is missing.
    """
    cfg = _run_config(config, reference_days=reference_days, window_days=window_days)
    as_of: dict[str, Any] | None = None
    if events is None:
        events, as_of = read_covered(
            settings, until_ms=int(now_ms) if now_ms else None, coverage=coverage, wait_s=wait_s
        )
    items = _items(settings) if items is None else items
    if not len(events):
        raise InvalidInput(
            f"no events to monitor in {settings.offline_dir / 'events'}", field="events"
        )
    now = int(now_ms) if now_ms else int(events["ts"].max()) + 1
    windows = split_windows(
        events, now_ms=now, reference_days=cfg.reference_days, window_days=cfg.window_days
    )
    score_frames, not_judged = None, None  # not_judged: why score drift could not be judged
    if scores:
        score_frames, not_judged = _score_frames(settings, cfg, events, windows, bundle)
    verdict = check(
        settings,
        events=events,
        items=items,
        now_ms=now,
        outcome=outcome_counts(*windows),
        scores=score_frames,
        record=record,
        alert=alert,
        config=cfg,
        as_of=as_of,
    )
    if not_judged:  # the champion is registered but unusable: say so in the result
        verdict.reason = f"{verdict.reason}; score drift not judged: {not_judged}"
    return verdict


def _run_config(
    config: MonitorConfig | None, *, reference_days: float | None, window_days: float | None
) -> MonitorConfig:
    """``config`` (default :class:`MonitorConfig`) with the window lengths given."""
    given = {"reference_days": reference_days, "window_days": window_days}
    return (config or MonitorConfig()).model_copy(
        update={k: v for k, v in given.items() if v is not None}
    )


def _score_frames(
    settings: Settings,
    cfg: MonitorConfig,
    events: pd.DataFrame,
    windows: tuple[pd.DataFrame, pd.DataFrame],
    bundle: object | None,
) -> tuple[tuple[pd.DataFrame, pd.DataFrame] | None, str | None]:
    """Both windows' users scored by ``bundle`` (default: the registered champion), and
    why score drift cannot be judged (None: it can, or there is no champion yet).

    The current window is scored against the reference's centroid, so both windows are
    measured against the same direction.
    """
    from rtrec.monitoring.scores import champion_bundle, score_features

    reference, current = windows
    model, not_judged = (bundle, None) if bundle is not None else champion_bundle(settings)
    if model is None or not len(reference) or not len(current):
        return None, not_judged
    ref_s, centroid = score_features(model, reference, history=events, sample=cfg.score_sample)
    cur_s, _ = score_features(
        model, current, history=events, centroid=centroid, sample=cfg.score_sample
    )
    return (ref_s, cur_s), not_judged


def read_covered(
    settings: Settings,
    *,
    until_ms: int | None = None,
    coverage: CoverageMode | None = None,
    wait_s: float | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The offline event log as of a watermark that covers the windows ending at
    ``until_ms`` (default: everything published by now), and what it was read as of.

    ``wait``: block until the watermark covers them (``Unavailable`` after ``wait_s``);
    ``as_of``: take the watermark as it is and say whether it covers them; either way,
    rows flushed after the watermark was read are left out, so the judgement is
    reproducible. ``unchecked`` reads every file as it is (a log written by something
    other than the stream processor: a backfill, a test).
    """
    from rtrec.streaming import covered_rows, offline_coverage, read_events, wait_for_offline_log

    mode = coverage or settings.monitoring.offline_coverage
    if mode not in COVERAGE_MODES:
        raise InvalidInput(
            f"coverage {mode!r} is not one of {COVERAGE_MODES}", field="offline_coverage"
        )
    directory = Path(settings.offline_dir) / "events"
    if mode == "unchecked":
        logger.warning(
            "drift check reads the offline log without checking that it covers the windows "
            "(offline_coverage=unchecked)"
        )
        note = "coverage not checked (offline_coverage=unchecked): the log as it was read"
        return read_events(directory), {"mode": mode, "covered": None, "note": note}
    timeout = settings.monitoring.offline_wait_s if wait_s is None else float(wait_s)
    if mode == "wait":
        cov = wait_for_offline_log(settings, until_ms=until_ms, timeout_s=timeout)
    else:
        cov = offline_coverage(settings, until_ms=until_ms)
    read = read_events(directory)
    events = covered_rows(read, cov)
    as_of = {
        "mode": mode,
        **cov.to_dict(),
        "rows_after_watermark": len(read) - len(events),
        "note": cov.describe(),
    }
    if not cov.covers():
        logger.warning("drift check judges the offline log as of its watermark: %s", cov.describe())
    else:
        logger.info(
            "offline log covers the windows (waited %.1f s): %s", cov.waited_s, cov.describe()
        )
    return events, as_of
