"""The product's second stage: the two-stage recipe (``rtrec.training.two_stage``) fitted
inside the training pipeline on the served configuration, and measured on the gate slice.

One point-in-time fold, the one selection already has: the sources fitted on train (with
the two-tower tuned on train), their candidates labelled by the validation period (a
sample of its users, ``settings.training.ranker_users``, which bounds the fit's time).
Then the sources are refitted on train + validation with the served two-tower, which is
what the bundle carries. The sources see what serving sees of a user: its
``rtrec.features.RECENT_ITEMS`` latest items (``SourceConfig.served``).

On the gate slice, untouched by every choice, the figures the demo's report shows: the
two-stage system's metrics beside retrieval order (the two-tower alone, what serving
falls back to) and each source's candidate recall beside the merged list's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from rtrec.features import RECENT_ITEMS
from rtrec.training.evaluate import Ranking, rank
from rtrec.training.pit_states import training_states
from rtrec.training.ranker import DEFAULT_PARAMS, Ranker, TwoStage
from rtrec.training.selection import Selection
from rtrec.training.sets import Frames, TrainingSets
from rtrec.training.two_stage import Fold, SourceConfig, fit_two_stage, recall_of_candidates

from rtrec.config import Settings

logger = logging.getLogger(__name__)


def sampled_labels(labels: pd.DataFrame, users: int, seed: int) -> pd.DataFrame:
    """``labels`` of at most ``users`` of its users, drawn with ``seed``."""
    ids = np.sort(labels["user_id"].astype(str).unique())
    if len(ids) <= users:
        return labels
    keep = set(np.random.default_rng(seed).choice(ids, size=users, replace=False))
    return labels[labels["user_id"].astype(str).isin(keep).to_numpy()]


def fit_ranker_stage(
    settings: Settings, sets: TrainingSets, frames: Frames, selection: Selection, model: Any
) -> tuple[TwoStage, dict[str, Any]]:
    """The fitted two-stage system on train + validation (``model``: the served two-tower)
    and what its fit found (see ``two_stage.fit_two_stage``)."""
    t = time.perf_counter()
    cfg = settings.training
    now = sets.cut_ts[0] if sets.protocol == "temporal" and sets.cut_ts else None
    labels = sampled_labels(frames.validation, cfg.ranker_users, settings.seed)
    users = sorted(labels["user_id"].astype(str).unique())
    states_at, states = training_states(
        settings, sets.source, now, users, frames.train, RECENT_ITEMS
    )
    fold = Fold(frames.train, labels, selection.tuned, now, states_at=states_at)
    config = SourceConfig.served(RECENT_ITEMS, neighbours=cfg.ranker_neighbours)
    # One thread: on the 2-core machine with other work beside it, two OpenMP threads
    # fitted the same ranker in 91 s against 19 s for one (their spin-waits collide).
    params = {**DEFAULT_PARAMS, "num_threads": 1}
    ranker = Ranker(seed=settings.seed, params=params, max_rounds=cfg.ranker_max_trees)
    two_stage, info = fit_two_stage(
        [fold],
        frames.fit_part,
        final_model=model,
        ease_l2=selection.ease_l2,
        seed=settings.seed,
        config=config,
        ranker=ranker,
    )
    info["fit_seconds"] = round(time.perf_counter() - t, 1)
    info["ranker_states"] = states
    logger.info("ranker training states: %s (%s)", states["source"], states["reason"])
    logger.info("ranker stage fitted", extra=info)
    return two_stage, info


def gate_figures(
    two_stage: TwoStage, frames: Frames, retrieval: dict[str, float]
) -> tuple[Ranking | None, dict[str, Any]]:
    """The two-stage system's ranking of the gate slice (what the gate judges), and for
    the report: its gain over ``retrieval`` (the two-tower's metrics there) and the
    candidate recall per source. None and empty without a gate slice."""
    if frames.gate.empty:
        return None, {}
    t = time.perf_counter()
    ranking = rank(two_stage, frames.fit_part, frames.gate)
    metrics = ranking.summary
    recall = recall_of_candidates(two_stage, frames.fit_part, frames.gate)
    gain = {
        k: {
            "two_stage": metrics[k],
            "retrieval": retrieval.get(k, float("nan")),
            "relative_gain": metrics[k] / retrieval[k] - 1 if retrieval.get(k) else None,
        }
        for k in ("ndcg@10", "recall@10")
    }
    report = {
        "slice": "gate",
        "candidates": two_stage.n,
        "candidate_recall": recall,
        "gain_over_retrieval": gain,
        "seconds": round(time.perf_counter() - t, 1),
    }
    return ranking, report
