"""Two-stage recommendations put together: the default candidate sources, the ranker
fitted on a point-in-time training set, and the final scorer on the latest state.

The same recipe for both evaluation protocols: sources fitted on the state before the
labels (the two-tower model fitted on that state too), ranker rows built from that state
with the labels after it; then the sources refitted on the final state (with the final
two-tower model) and the fitted ranker applied to them. The test part is touched only by
the final scoring.

The ranker learns from several such slices (:class:`Fold`): one validation cut holds a
few thousand positives, too few for trees to learn much beyond the retrieval scores they
start from. Under a time split the slices are earlier cuts of the training period
(:func:`time_slices`), under a random split fresh random holdouts (:func:`random_slices`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from rtrec.training.candidates import (
    Candidates,
    CategoryTrendingSource,
    PopularSource,
    item_categories,
    merge,
)
from rtrec.training.learned_sources import EXACT_MAX_ITEMS, ItemItemSource, TwoTowerSource
from rtrec.training.pit_states import EVENT_LOG, FEAST, StatesAt
from rtrec.training.rank_features import CandidateGenerator
from rtrec.training.ranker import Ranker, TwoStage, candidate_recall, ranking_rows

WEIGHTS = {"two_tower": 1.0, "item_item": 1.0, "category": 0.2, "popular": 0.2}
"""Merge weights: the two learned sources recall far more than the other two on their own;
the others add their first picks only."""


PER_CATEGORY = 300
"""Items per category the served category source scores (its most trending)."""


@dataclass(frozen=True)
class SourceConfig:
    """How much each source holds and reads. The defaults are the offline benchmark's
    (every EASE weight of a small catalog, a user's whole history); :meth:`served` bounds
    a request's work and sees only what the online store keeps of a user."""

    neighbours: int = 1000
    ii_exact_max: int = EXACT_MAX_ITEMS
    ii_recent: int = 500
    per_category: int | None = None
    history_limit: int | None = None

    @classmethod
    def served(cls, history_limit: int, *, neighbours: int = 100) -> SourceConfig:
        """``neighbours`` EASE weights per item whatever the catalog's size, each
        category's 300 most trending items (a request scores their union; the source
        answers 200, of which the merge keeps its first 40), the ``history_limit`` latest
        items."""
        return cls(
            neighbours=neighbours,
            ii_exact_max=0,
            ii_recent=history_limit,
            per_category=PER_CATEGORY,
            history_limit=history_limit,
        )


def build_generator(
    events: pd.DataFrame,
    model: Any,
    *,
    ease_l2: float,
    per_source: int = 200,
    config: SourceConfig = SourceConfig(),
) -> CandidateGenerator:
    """The four sources, fitted on ``events`` (``model``: a two-tower fitted on them)."""
    cats = item_categories(events)
    c = config
    sources = [
        TwoTowerSource(model),
        ItemItemSource(
            l2=ease_l2, neighbours=c.neighbours, recent=c.ii_recent, exact_max=c.ii_exact_max
        ),
        CategoryTrendingSource(cats, per_category=c.per_category),
        PopularSource(),
    ]
    gen = CandidateGenerator(
        sources, per_source, item_categories=cats, weights=WEIGHTS, history_limit=c.history_limit
    )
    return gen.fit(events)


@dataclass(frozen=True)
class Fold:
    """One point-in-time slice the ranker learns from: the sources are fitted on ``state``
    (``model``: a two-tower fitted on it alone) and the candidates labelled by ``labels``,
    interactions the sources never saw (after ``now`` under a time split)."""

    state: pd.DataFrame
    labels: pd.DataFrame
    model: Any
    now: int | None = None
    states_at: StatesAt | None = None
    """The users' states at ``now`` from Feast's historical retrieval
    (``rtrec.training.pit_states``); None: from ``state``, the event log."""


def random_slices(
    events: pd.DataFrame, k: int, frac: float, seed: int
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """``k`` (state, labels) pairs for a random split: each holds out a random ``frac`` of
    the rows as labels (a fresh draw per slice, as the evaluation's own held-out part is)."""
    out = []
    for j in range(k):
        held = np.random.default_rng([seed, j]).random(len(events)) < frac
        out.append((events[~held].reset_index(drop=True), events[held].reset_index(drop=True)))
    return out


def time_slices(
    events: pd.DataFrame, now: int, size: int, k: int
) -> list[tuple[pd.DataFrame, pd.DataFrame, int]]:
    """Up to ``k`` (state, labels, cut) triples for a time split, walking back from ``now``:
    each cut's labels are the ``size`` events before the previous cut (the size of the
    validation period), its state everything earlier. Stops where too little is left."""
    ts = np.sort(events["ts"].to_numpy(dtype=np.int64))
    stamps = events["ts"].to_numpy(dtype=np.int64)
    out, prev = [], now
    for _ in range(k):
        before = ts[ts < prev]
        if size < 1 or len(before) <= 2 * size:
            break
        cut = int(before[-size])
        labels = events[(stamps >= cut) & (stamps < prev)]
        out.append((events[stamps < cut], labels, cut))
        prev = cut
    return out


def fold_rows(
    folds: Sequence[Fold], *, ease_l2: float, n: int, config: SourceConfig = SourceConfig()
) -> pd.DataFrame:
    """The ranker's training rows from every fold, each fold's queries kept apart (a
    ``fold`` column): more folds, more users and moments for the trees to learn from."""
    return pd.concat([rows for _, rows in _fold_parts(folds, ease_l2, n, config)])


def _fold_parts(
    folds: Sequence[Fold],
    ease_l2: float,
    n: int,
    config: SourceConfig,
    weights: dict[str, float] | None = None,
    gens: Sequence[CandidateGenerator] | None = None,
) -> list[tuple[CandidateGenerator, pd.DataFrame]]:
    """Each fold's generator (``gens``: already fitted ones) and ranking rows."""
    parts = []
    for k, f in enumerate(folds):
        gen = (
            gens[k]
            if gens is not None
            else build_generator(f.state, f.model, ease_l2=ease_l2, per_source=n, config=config)
        )
        gen.weights = dict(weights or WEIGHTS)
        rows = ranking_rows(gen, f.state, f.labels, now=f.now, n=n, states_at=f.states_at)
        parts.append((gen, rows.assign(fold=k)))
    return parts


WEIGHT_GRID = tuple(
    {"two_tower": 1.0, "item_item": ii, "category": other, "popular": other}
    for ii in (0.5, 1.0, 2.0)
    for other in (0.05, 0.2)
)
"""The merge weights :func:`choose_weights` tries (``WEIGHTS`` among them)."""


def fold_answers(
    fold: Fold, gen: CandidateGenerator
) -> tuple[list[str], dict[str, list[Candidates]]]:
    """The users with labels in ``fold`` and each source's list for each, from their
    states at the fold's moment (Feast's, where the fold has them)."""
    users = sorted(fold.labels["user_id"].astype(str).unique())
    if fold.states_at is not None and fold.now is not None:
        states = fold.states_at(users, fold.now)
    else:
        states = gen.states(fold.state, users, before=fold.now)
    return [s.user_id for s in states], gen.answers(states)


def choose_weights(
    ids: list[str], answers: dict[str, list[Candidates]], labels: pd.DataFrame, n: int
) -> tuple[dict[str, float], dict]:
    """The merge weights whose first ``n`` candidates of ``answers`` (:func:`fold_answers`)
    recall most of ``labels`` (ties: ``WEIGHTS``), and each tried set's recall. A fold's
    labels are held out from its state, and the evaluation's test part from every fold:
    validation alone decides."""
    tried: dict[str, float] = {}
    best, best_recall = dict(WEIGHTS), -1.0
    for w in sorted(WEIGHT_GRID, key=lambda w: w != WEIGHTS):  # WEIGHTS first: wins ties
        recall = candidate_recall(merge(answers, ids, n, w), labels, [], n)["merged"]
        tried[json.dumps(w, sort_keys=True)] = round(recall, 4)
        if recall > best_recall:
            best, best_recall = dict(w), recall
    return best, tried


def fit_two_stage(
    folds: Sequence[Fold],
    final: pd.DataFrame,
    *,
    final_model: Any,
    ease_l2: float,
    n: int = 200,
    seed: int = 0,
    config: SourceConfig = SourceConfig(),
    ranker: Ranker | None = None,
) -> tuple[TwoStage, dict[str, Any]]:
    """The fitted two-stage scorer on ``final`` and what its fitting found (the ranker's
    validation NDCG@10 on its candidate lists beside the prior's, rounds, candidate
    recall@``n`` of the first fold's labels per source, top features by gain). ``ranker``:
    an unfitted ranker with other settings than the default's."""
    if not folds:
        raise ValueError("fit_two_stage needs at least one fold")
    gens = [
        build_generator(f.state, f.model, ease_l2=ease_l2, per_source=n, config=config)
        for f in folds
    ]
    # The first fold's candidates, found once: they choose the merge weights and give
    # the validation recall of every source and of the merged list.
    first = folds[0]
    ids, answers = fold_answers(first, gens[0])
    weights, tried = choose_weights(ids, answers, first.labels, n)
    parts = _fold_parts(folds, ease_l2, n, config, weights, gens)
    rows = pd.concat([r for _, r in parts], ignore_index=True)
    ranker = (ranker or Ranker(seed=seed)).fit(rows)
    names = [s.name for s in gens[0].sources]
    wide = merge(answers, ids, n * len(names), weights)
    info = {
        "ranker_states": {"source": EVENT_LOG if first.states_at is None else FEAST},
        "ranker_folds": len(folds),
        "ranker_rows": len(rows),
        "ranker_rounds": ranker.best_rounds,
        "ranker_params": ranker.chosen,
        "ranker_prior_weight": ranker.prior_weight,
        "ranker_valid_ndcg@10": round(ranker.valid_ndcg, 4),
        "prior_valid_ndcg@10": round(ranker.prior_ndcg, 4),
        "ranker_cold_trees": ranker.cold_trees,
        "ranker_cold_gain@10": None if np.isnan(ranker.cold_gain) else round(ranker.cold_gain, 4),
        "valid_candidate_recall": candidate_recall(wide, first.labels, names, n),
        "top_features": list(ranker.importance())[:8],
    }
    info |= {"merge_weights": weights, "merge_weights_tried": tried}
    final_gen = build_generator(final, final_model, ease_l2=ease_l2, per_source=n, config=config)
    final_gen.weights = weights
    return TwoStage(final_gen, ranker, n), info


def recall_of_candidates(model: TwoStage, seen: pd.DataFrame, target: pd.DataFrame) -> dict:
    """Candidate recall@n on ``target`` of the merged list and of each source alone."""
    gen = model.generator
    names = [s.name for s in gen.sources]
    users = sorted(target["user_id"].astype(str).unique())
    wide = gen.generate(gen.states(seen, users), model.n * len(names))
    return candidate_recall(wide, target, names, model.n)
