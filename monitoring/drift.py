"""Drift checks: Evidently on stream features and served scores, plus the outcome rate.

A check compares a reference window with the latest window. Three signals:

- **feature drift** — Evidently's ``DataDriftPreset`` over per-event features derived from
  the stream (event type, item category, the item's popularity rank in the reference
  window): popularity shifts, new items and taste drift all move them;
- **score drift** — the same over served / model scores and embedding statistics, when the
  caller has them;
- **outcome drift** — clicks per recommendation, a two-proportion z-test.

Stationary windows must not alert: each Evidently column test uses a distance
(Wasserstein / Jensen-Shannon, threshold 0.1), which sampling noise of windows with a few
thousand rows stays far below; a window drifts when the share of drifted columns of either
group (stream features, ``score_*`` columns) reaches ``drift_share_threshold`` or the
outcome rate moves significantly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from rtrec.errors import InvalidInput

logger = logging.getLogger(__name__)

FEATURE_NUMERICAL = ("item_pop_rank",)
FEATURE_CATEGORICAL = ("event_type", "category")
MIN_ROWS = 200
"""Windows smaller than this are too noisy to judge; the check says so instead of alerting."""


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class OutcomeDrift:
    reference_rate: float
    current_rate: float
    z: float
    drifted: bool


@dataclass
class DriftVerdict:
    """Structured result of one check; ``to_dict`` is what goes to XCom, alerts and logs."""

    drifted: bool
    drift_share: float
    columns: list[ColumnDrift]
    reason: str
    reference_rows: int
    current_rows: int
    outcome: OutcomeDrift | None = None
    snapshot: Any = field(default=None, repr=False, compare=False)
    """The Evidently snapshot, for dashboards; not serialised."""
    judged: bool = True
    """False when a window was too small to judge: neither stable nor drifted, and
    ``reason`` starts with "not judged:"."""
    as_of: dict[str, Any] | None = None
    """What the windows were cut from (set by :func:`rtrec.monitoring.monitor_offline_log`):
    ``mode`` ("wait": the offline log covered the window before it was read; "as_of":
    judged as of the log's watermark, ``covered`` says whether that held the window;
    "unchecked"; "given": the caller passed the events) and the watermark's fields
    (``event_time_ms``, per partition ``through`` and ``end_offsets``, ``behind``)."""
    windows: dict[str, list[int]] | None = None
    """``{"reference": [start_ms, end_ms), "current": [start_ms, end_ms)}``."""

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def status(self) -> str:
        """ "drifted", "stable" or "not judged"."""
        if not self.judged:
            return "not judged"
        return "drifted" if self.drifted else "stable"

    @property
    def summary(self) -> str:
        """One line: the status and its reason, and what the windows were judged as of
        when that was not a log known to cover them."""
        text = (
            self.reason if self.reason.startswith(self.status) else f"{self.status}: {self.reason}"
        )
        as_of = self.as_of or {}
        if as_of.get("mode") in ("as_of", "unchecked") and not as_of.get("covered"):
            text += f" [judged as of the offline log's watermark: {as_of.get('note', '')}]"
        return text

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("snapshot", None)
        out["drifted_columns"] = self.drifted_columns
        out["status"] = self.status
        out["summary"] = self.summary
        return out


def window_features(
    events: pd.DataFrame,
    items: pd.DataFrame | None,
    *,
    popularity_rank: pd.Series | None = None,
) -> pd.DataFrame:
    """Per-event monitoring features of one window of events.

    ``popularity_rank`` maps item id -> rank (0 = most popular) in the *reference* window,
    so the current window is judged by the reference's popularity; unseen items get the
    worst rank + 1. Ranks are log-scaled so head and tail both matter.
    """
    for col in ("user_id", "item_id", "event_type"):
        if col not in events.columns:
            raise InvalidInput(f"events frame lacks column '{col}'", field=col)
    if popularity_rank is None:
        popularity_rank = popularity_ranks(events)
    unseen = float(len(popularity_rank))
    rank = events["item_id"].map(popularity_rank).astype("float64").fillna(unseen)
    out = pd.DataFrame(
        {
            "event_type": events["event_type"].astype(str).to_numpy(),
            "item_pop_rank": np.log1p(rank.to_numpy()),
        }
    )
    if items is not None and len(items):
        primary = items.set_index("item_id")["categories"].map(
            lambda c: c[0] if c is not None and len(c) else "unknown"
        )
        out["category"] = events["item_id"].map(primary).fillna("unknown").to_numpy()
    else:
        out["category"] = "unknown"
    return out


def popularity_ranks(events: pd.DataFrame) -> pd.Series:
    """Item id -> popularity rank (0 = most interactions) within ``events``."""
    counts = events["item_id"].value_counts(sort=True)
    return pd.Series(np.arange(len(counts), dtype="float64"), index=counts.index)


def outcome_drift(
    reference: tuple[int, int], current: tuple[int, int], *, z_threshold: float = 4.0
) -> OutcomeDrift | None:
    """Two-proportion z-test on (clicks, recommendations) of two windows.

    The threshold is strict (|z| > 4) because a monitor runs many times a day: at 4σ a
    stationary rate alerts about once in 16,000 checks.
    """
    (c1, n1), (c2, n2) = reference, current
    if min(n1, n2) <= 0:
        return None
    p1, p2 = c1 / n1, c2 / n2
    pooled = (c1 + c2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n1 + 1 / n2))
    z = (p2 - p1) / se
    return OutcomeDrift(p1, p2, z, abs(z) > z_threshold)


def _evidently(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: list[str],
    categorical: list[str],
    *,
    threshold: float,
    outcome_rates: tuple[float, float] | None,
    timestamp: datetime | None = None,
    per_column_threshold: dict[str, float] | None = None,
) -> tuple[list[ColumnDrift], Any]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue
    from evidently.presets import DataDriftPreset

    cols = numerical + categorical
    ref, cur = reference[cols].copy(), current[cols].copy()
    metrics: list[Any] = [
        # Distances, not p-values, at every sample size: p-value tests flag 5% of
        # stationary columns by design, which would make a frequent monitor cry wolf.
        DataDriftPreset(
            columns=cols,
            num_method="wasserstein",
            cat_method="jensenshannon",
            threshold=threshold,
            per_column_threshold=per_column_threshold or None,
        )
    ]
    extra_num: list[str] = []
    if outcome_rates is not None:
        ref["outcome_rate"], cur["outcome_rate"] = outcome_rates
        extra_num.append("outcome_rate")
        metrics.append(MeanValue(column="outcome_rate"))
    definition = DataDefinition(
        numerical_columns=numerical + extra_num, categorical_columns=categorical
    )
    snapshot = Report(metrics).run(
        reference_data=Dataset.from_pandas(ref, data_definition=definition),
        current_data=Dataset.from_pandas(cur, data_definition=definition),
        timestamp=timestamp,
    )
    drifts: list[ColumnDrift] = []
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        score, threshold = float(metric["value"]), float(config.get("threshold", 0.1))
        method = str(config.get("method", ""))
        # p-value tests drift when *below* the threshold; distances when above.
        is_p_value = "p_value" in method or "test" in method.lower()
        drifted = score < threshold if is_p_value else score >= threshold
        drifts.append(ColumnDrift(config["column"], method, score, threshold, drifted))
    return drifts, snapshot


def group_columns(columns: list[ColumnDrift]) -> dict[str, list[ColumnDrift]]:
    """``{"feature": [...], "score": [...]}``: score columns are the ``score_*`` ones."""
    groups: dict[str, list[ColumnDrift]] = {}
    for c in columns:
        groups.setdefault("score" if c.column.startswith("score_") else "feature", []).append(c)
    return groups


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numerical: list[str] | None = None,
    categorical: list[str] | None = None,
    drift_share_threshold: float = 0.5,
    column_threshold: float = 0.1,
    score_threshold: float | None = None,
    outcome: tuple[tuple[int, int], tuple[int, int]] | None = None,
    outcome_z: float = 4.0,
    timestamp: datetime | None = None,
) -> DriftVerdict:
    """Compare two windows of monitoring features; see the module docstring.

    ``reference`` and ``current`` are frames of features (e.g. from :func:`window_features`,
    optionally with score columns); column roles default to the stream-feature columns
    present. ``outcome`` is ``((clicks, recs) reference, (clicks, recs) current)``.
    ``score_threshold`` replaces ``column_threshold`` for the ``score_*`` columns (a
    sample of users is noisier than every event). ``timestamp`` (the current window's
    end) places the snapshot on the dashboard's time axis; default now.
    """
    numerical = list(numerical or [c for c in FEATURE_NUMERICAL if c in reference.columns])
    numerical += [c for c in reference.columns if c.startswith("score_") and c not in numerical]
    categorical = categorical or [c for c in FEATURE_CATEGORICAL if c in reference.columns]
    missing = [c for c in numerical + categorical if c not in current.columns]
    if missing:
        raise InvalidInput(f"current window lacks columns {missing}", field=missing[0])
    out = outcome_drift(*outcome, z_threshold=outcome_z) if outcome else None
    if min(len(reference), len(current)) < MIN_ROWS:
        reason = (
            f"not judged: windows have {len(reference)} and {len(current)} rows (need {MIN_ROWS})"
        )
        logger.warning("drift %s", reason)
        return DriftVerdict(False, 0.0, [], reason, len(reference), len(current), out, judged=False)
    rates = (out.reference_rate, out.current_rate) if out is not None else None
    columns, snapshot = _evidently(
        reference,
        current,
        numerical,
        categorical,
        threshold=column_threshold,
        outcome_rates=rates,
        timestamp=timestamp,
        per_column_threshold={c: score_threshold for c in numerical if c.startswith("score_")}
        if score_threshold is not None
        else None,
    )
    share = sum(c.drifted for c in columns) / max(len(columns), 1)
    reasons = _drift_reasons(columns, out, drift_share_threshold)
    drifted = bool(reasons)
    reason = "; ".join(reasons) if drifted else f"no drift: {share:.0%} of columns drifted"
    verdict = DriftVerdict(
        drifted, share, columns, reason, len(reference), len(current), out, snapshot
    )
    logger.info("drift check", extra={"drifted": drifted, "drift_share": share, "reason": reason})
    return verdict


def _drift_reasons(
    columns: list[ColumnDrift], out: OutcomeDrift | None, drift_share_threshold: float
) -> list[str]:
    """What drifted, one reason per group of columns over the threshold and one for the
    outcome rate; empty when nothing did.

    Feature and score columns are judged as separate groups: a model-side shift with
    stable stream features (or the reverse) must not be diluted by the other group.
    """
    reasons = []
    for group, cols in group_columns(columns).items():
        group_share = sum(c.drifted for c in cols) / len(cols)
        if group_share >= drift_share_threshold:
            names = ", ".join(f"{c.column} ({c.score:.2f})" for c in cols if c.drifted)
            reasons.append(
                f"{group} drift: {group_share:.0%} of {len(cols)} columns drifted "
                f"(threshold {drift_share_threshold:.0%}): {names}"
            )
    if out is not None and out.drifted:
        reasons.append(
            f"outcome rate moved from {out.reference_rate:.3f} to {out.current_rate:.3f} "
            f"(z={out.z:.1f})"
        )
    return reasons
