"""One monitor run: window the events, judge drift, record the snapshot, alert.

The reference is the ``reference_days`` before the latest ``window_days``; popularity
ranks come from the reference, so the latest window is judged by what was popular then.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from monitoring.alerts import alert_record, send_alert
from monitoring.dashboards import record_snapshot
from monitoring.drift import DriftVerdict, drift_report, popularity_ranks, window_features
from rtrec.config import Settings
from rtrec.errors import InvalidInput, Unavailable

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000


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


def check(
    settings: Settings,
    *,
    events: pd.DataFrame,
    items: pd.DataFrame | None = None,
    now_ms: int | None = None,
    reference_days: float = 7.0,
    window_days: float = 1.0,
    outcome: tuple[tuple[int, int], tuple[int, int]] | None = None,
    scores: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    record: bool = True,
    alert: bool = True,
) -> DriftVerdict:
    """Run one drift check over an events frame (columns user_id, item_id, event_type, ts).

    ``now_ms`` defaults to the newest event's time (replays run in the past).
    ``scores`` optionally adds served-score columns (``score_*``) for both windows.
    """
    if now_ms is None:
        now_ms = int(events["ts"].max()) + 1 if len(events) else int(time.time() * 1000)
    reference, current = split_windows(
        events, now_ms=now_ms, reference_days=reference_days, window_days=window_days
    )
    ranks = popularity_ranks(reference)
    ref_f = window_features(reference, items, popularity_rank=ranks)
    cur_f = window_features(current, items, popularity_rank=ranks)
    if scores is not None:
        ref_f = _with_scores(ref_f, scores[0])
        cur_f = _with_scores(cur_f, scores[1])
    verdict = drift_report(
        ref_f,
        cur_f,
        drift_share_threshold=settings.monitoring.drift_share_threshold,
        outcome=outcome,
    )
    if record and verdict.snapshot is not None:
        record_snapshot(settings, verdict.snapshot)
    if alert and verdict.drifted:
        record_ = alert_record("drift", verdict.to_dict(), window_end_ms=now_ms)
        try:
            send_alert(settings, record_)
        except Unavailable as exc:
            logger.error("%s", exc)
    return verdict


def _with_scores(features: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Score columns are per served request, not per event: sample them to the same length."""
    cols = [c for c in scores.columns if c.startswith("score_")]
    if not cols or not len(scores) or not len(features):
        return features
    sampled = scores[cols].sample(n=len(features), replace=True, random_state=0)
    return pd.concat([features.reset_index(drop=True), sampled.reset_index(drop=True)], axis=1)
