"""Two-stage recommendations put together: the default candidate sources, the ranker
fitted on a point-in-time training set, and the final scorer on the latest state.

The same recipe for both evaluation protocols: sources fitted on the state before the
labels (the two-tower model fitted on that state too: the one validation tuned), ranker
rows built from that state with the labels after it; then the sources refitted on the
final state (with the final two-tower model) and the fitted ranker applied to them.
The test part is touched only by the final scoring.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from rtrec.training.candidates import (
    CategoryTrendingSource,
    PopularSource,
    item_categories,
    user_states,
)
from rtrec.training.learned_sources import ItemItemSource, TwoTowerSource
from rtrec.training.rank_features import CandidateGenerator
from rtrec.training.ranker import Ranker, TwoStage, candidate_recall, ranking_rows

WEIGHTS = {"two_tower": 1.0, "item_item": 1.0, "category": 0.2, "popular": 0.2}
"""Merge weights: the two learned sources recall far more than the other two on their own;
the others add their first picks only."""


def build_generator(
    events: pd.DataFrame, model: Any, *, ease_l2: float, per_source: int = 200
) -> CandidateGenerator:
    """The four sources, fitted on ``events`` (``model``: a two-tower fitted on them)."""
    cats = item_categories(events)
    sources = [
        TwoTowerSource(model),
        ItemItemSource(l2=ease_l2),
        CategoryTrendingSource(cats),
        PopularSource(),
    ]
    gen = CandidateGenerator(sources, per_source, item_categories=cats, weights=WEIGHTS)
    return gen.fit(events)


def fit_two_stage(
    state: pd.DataFrame,
    labels: pd.DataFrame,
    final: pd.DataFrame,
    *,
    state_model: Any,
    final_model: Any,
    ease_l2: float,
    now: int | None = None,
    n: int = 200,
    seed: int = 0,
) -> tuple[TwoStage, dict[str, Any]]:
    """The fitted two-stage scorer on ``final`` and what its fitting found (the ranker's
    validation NDCG@10 on its candidate lists, rounds, candidate recall@``n`` of the
    labels per source, top features by gain)."""
    gen = build_generator(state, state_model, ease_l2=ease_l2, per_source=n)
    rows = ranking_rows(gen, state, labels, now=now, n=n)
    ranker = Ranker(seed=seed).fit(rows)
    names = [s.name for s in gen.sources]
    users = sorted(labels["user_id"].astype(str).unique())
    wide = gen.generate(user_states(state, users), n * len(names))
    info = {
        "ranker_rounds": ranker.best_rounds,
        "ranker_valid_ndcg@10": round(ranker.valid_ndcg, 4),
        "ranker_rows": len(rows),
        "valid_candidate_recall": candidate_recall(wide, labels, names, n),
        "top_features": list(ranker.importance())[:8],
    }
    final_gen = build_generator(final, final_model, ease_l2=ease_l2, per_source=n)
    return TwoStage(final_gen, ranker, n), info


def recall_of_candidates(model: TwoStage, seen: pd.DataFrame, target: pd.DataFrame) -> dict:
    """Candidate recall@n on ``target`` of the merged list and of each source alone."""
    gen = model.generator
    names = [s.name for s in gen.sources]
    users = sorted(target["user_id"].astype(str).unique())
    wide = gen.generate(user_states(seen, users), model.n * len(names))
    return candidate_recall(wide, target, names, model.n)
