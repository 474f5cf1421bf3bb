"""Model-side monitoring features: what the champion would serve each window's users.

Served scores move when users' histories move away from what the model learned, before
clicks say so. For the users behind a sample of the window's events the champion builds
a user vector from their latest ``history_len`` items as of the window's end (from the
whole log, as the online features would hold them, so a short window does not mean short
histories) and retrieves the top ``k``; per user we keep

- ``score_top1``, ``score_mean``: the best and mean top-``k`` retrieval scores;
- ``score_centroid_sim``: cosine between the user vector and the reference window's mean
  user vector (an embedding statistic: it falls when the user population's taste moves).
  Reference users are compared with the mean of the *other* reference users, so their
  own vector does not pull the statistic up.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import Counter

logger = logging.getLogger(__name__)

SCORE_DRIFT_SKIPPED = Counter(
    "rtrec_monitor_score_drift_skipped_total",
    "Monitor runs that could not judge score drift although a champion is registered",
    ["reason"],
)
SCORE_COLUMNS = ("score_top1", "score_mean", "score_centroid_sim")


def _histories(events: pd.DataFrame, users: list[str], history_len: int) -> list[list[str]]:
    recent = events[events["user_id"].isin(set(users))].sort_values("ts", ascending=False)
    grouped = recent.groupby("user_id", sort=False)["item_id"].agg(
        lambda s: [str(i) for i in s.head(history_len)]
    )
    return [grouped.get(u, []) for u in users]


def user_vectors(
    bundle: Any,
    events: pd.DataFrame,
    *,
    history: pd.DataFrame | None = None,
    sample: int = 1000,
    seed: int = 0,
) -> tuple[list[str], np.ndarray]:
    """Vectors of the users behind ``sample`` events of the window (fixed seed).

    Sampling events, not distinct users, weighs users by activity in windows of any
    length alike: the distinct users of one day are heavier users than those of a week,
    which would read as score drift between a 1-day and a 7-day window.
    ``history``: events to take histories from (default ``events``); only those up to
    the window's end are used.
    """
    if len(events) > sample:
        users = events["user_id"].sample(n=sample, random_state=seed)
    else:
        users = events["user_id"]
    ids = [str(u) for u in users]
    if not ids:
        return [], np.zeros((0, 0), dtype=np.float32)
    past = events if history is None else history[history["ts"] <= events["ts"].max()]
    return ids, bundle.user_vectors(ids, _histories(past, ids, bundle.history_len))


def score_features(
    bundle: Any,
    events: pd.DataFrame,
    *,
    history: pd.DataFrame | None = None,
    centroid: np.ndarray | None = None,
    k: int = 10,
    sample: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-user score columns of one window, and the window's mean user vector.

    Score the reference window first (no ``centroid``), then pass its centroid when
    scoring the current window, so both are measured against the same direction.
    """
    _, vecs = user_vectors(bundle, events, history=history, sample=sample, seed=seed)
    if not len(vecs):
        return pd.DataFrame(columns=list(SCORE_COLUMNS)), np.zeros(0, dtype=np.float32)
    scores, _ = bundle.search(vecs, k)
    scores = np.where(np.isfinite(scores), scores, np.nan)
    mean = vecs.mean(axis=0)
    if centroid is None or not len(centroid):
        # Leave-one-out: each reference user against the mean of the others.
        refs = (mean * len(vecs) - vecs) / max(len(vecs) - 1, 1)
    else:
        refs = np.broadcast_to(centroid, vecs.shape)
    cos = (vecs * refs).sum(axis=1) / np.maximum(
        np.linalg.norm(vecs, axis=1) * np.linalg.norm(refs, axis=1), 1e-12
    )
    frame = pd.DataFrame(
        {
            "score_top1": np.nanmax(scores, axis=1),
            "score_mean": np.nanmean(scores, axis=1),
            "score_centroid_sim": cos,
        }
    )
    return frame, mean


def champion_bundle(settings: Any) -> tuple[Any | None, str | None]:
    """``(bundle, None)`` for the registered champion; ``(None, None)`` when there is
    genuinely none (no registered model, no ``champion`` alias): nothing to score with.

    Any other failure (registry unreachable, a bundle that does not download or load) is
    a degradation by design: the monitor still judges feature and outcome drift, and
    gets ``(None, reason)`` to report "score drift not judged: <reason>". The reason is
    logged at WARNING and counted in ``rtrec_monitor_score_drift_skipped_total``.
    """
    from rtrec.training import ChampionUnusable, load_champion

    from rtrec.errors import RtrecError

    try:
        found = load_champion(settings, use_gpu=False)
    except ChampionUnusable as exc:  # any download or load failure: a broken champion
        what = f"champion version {exc.version} unusable"
        return None, _skipped("champion_unusable", what, exc.cause)
    except RtrecError as exc:
        return None, _skipped("registry_unavailable", "model registry unavailable", exc)
    if found is None:
        logger.info("no champion registered: score drift is not judged")
        return None, None
    return found[1], None


def _skipped(label: str, what: str, exc: Exception) -> str:
    reason = f"{what}: {type(exc).__name__}: {exc}"[:500]
    SCORE_DRIFT_SKIPPED.labels(label).inc()
    logger.warning("score drift not judged: %s", reason)
    return reason
