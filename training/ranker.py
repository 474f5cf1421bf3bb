"""The second stage: a learned ranker over the merged candidates, and the point-in-time
training set it learns from.

Why LightGBM lambdarank: a mature, widely deployed library, fast on CPU (a few seconds for
a few hundred thousand rows, no GPU needed beside the two-tower's), native lambdarank with
query groups (one group per user and moment, optimising NDCG directly), and it takes
missing values as they come (a source that did not return a candidate leaves its rank and
score missing, which is itself information). Imported lazily: only fitting and scoring
need it.

Training set (:func:`ranking_rows`): the candidate generator is fitted on the events
before a moment ``now``; every user with a label after ``now`` gets its candidates from
its state before ``now``; a candidate's label is whether the user went on to interact
with it. Nothing at or after ``now`` reaches a feature: the generator and the tables are
built from earlier events, and the builder refuses a generator that saw later ones.
Under a random split (the published protocol) there is no time order: ``now`` is left
unset and the labels are a held-out part of the training rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rtrec.training.candidates import UserState
from rtrec.training.rank_features import (
    CandidateGenerator,
    candidate_features,
    feature_names,
)
from rtrec.training.ranker_cv import group_ndcg, lockstep, query_key, query_sizes, user_folds
from rtrec.training.vocab import Vocab

logger = logging.getLogger(__name__)

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    "learning_rate": 0.02,
    "num_leaves": 15,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambdarank_truncation_level": 20,
    "verbosity": -1,
    # The same trees from the same rows, whatever the threads' timing: a rerun of a
    # quality benchmark differs only where its inputs do.
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
}


def rows_for(
    generator: CandidateGenerator, states: list[UserState], now: int, n: int
) -> pd.DataFrame:
    """Candidates and features of ``states`` at ``now`` (training rows and requests alike)."""
    cands = generator.generate(states, n)
    return candidate_features(cands, states, generator.items, now, generator.item_categories)


def ranking_rows(
    generator: CandidateGenerator,
    events: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    now: int | None = None,
    n: int = 200,
    states_at: Callable[[Sequence[str], int], list[UserState]] | None = None,
) -> pd.DataFrame:
    """Point-in-time training rows: one group per user with a label, ``label`` 1 for a
    candidate the user interacted with in ``labels`` (see module doc). ``states_at``:
    the users' states at ``now`` from elsewhere than ``events`` (Feast's historical
    retrieval, ``rtrec.training.pit_states``); the candidates and the user features are
    then built from those states."""
    if now is not None:
        if generator.now > now:
            raise ValueError(f"the generator saw events up to {generator.now - 1}, after {now}")
        if len(labels) and int(labels["ts"].min()) < now:
            raise ValueError(f"labels start before now ({int(labels['ts'].min())} < {now})")
        events = events[events["ts"].to_numpy() < now]
    elif states_at is not None:
        raise ValueError("states_at needs the examples' time (now)")
    at = generator.now if now is None else now
    users = sorted(labels["user_id"].astype(str).unique())
    states = states_at(users, at) if states_at else generator.states(events, users)
    rows = rows_for(generator, states, at, n)
    pairs = set(zip(labels["user_id"].astype(str), labels["item_id"].astype(str), strict=True))
    keys = zip(rows["user_id"], rows["item_id"], strict=True)
    rows["label"] = np.fromiter((k in pairs for k in keys), dtype=np.int8, count=len(rows))
    return rows


PRIOR_WEIGHTS = (0.2, 0.35, 0.5, 0.65, 0.8)
"""Two-tower weights tried in the prior blend (the item-item score gets the rest)."""

PARAM_GRID: tuple[dict[str, Any], ...] = (
    {},
    {"num_leaves": 31, "min_data_in_leaf": 50},
    {"num_leaves": 7, "min_data_in_leaf": 200, "learning_rate": 0.05},
    {"objective": "rank_xendcg"},
    {"from_prior": False},
    {"from_prior": False, "num_leaves": 31, "min_data_in_leaf": 50, "learning_rate": 0.05},
)
"""Departures from ``DEFAULT_PARAMS`` tried by cross-validation over users: how much the trees may
split, which ranking loss suits the data, and whether they start from the prior
(``from_prior``, default true) or learn the whole order (which needs more labels than a
small data set's slices hold) is an empirical question per data set."""


def _z(rows: pd.DataFrame, column: str) -> np.ndarray:
    """Per-query standardised score; a candidate the scorer cannot score sits far below
    (no such column: no contribution)."""
    if column not in rows:
        return np.zeros(len(rows))
    g = rows[column].groupby(query_key(rows))
    z = (rows[column] - g.transform("mean")) / g.transform("std")
    return z.fillna(-5.0).to_numpy()


def prior(rows: pd.DataFrame, weight: float) -> np.ndarray:
    """The trees' starting point: a blend of the two-tower and item-item scores."""
    return weight * _z(rows, "tt_score") + (1.0 - weight) * _z(rows, "ii_score")


@dataclass
class Ranker:
    """LightGBM lambdarank over :func:`rank_features.candidate_features` rows.

    The trees start from a prior, a blend of the two retrieval scores (its weight chosen
    on the training queries), and learn corrections from the other features: with the few
    thousand labels a validation cut holds, trees learning the whole order from scratch
    fell below the blend they were given as features. When no tree setting beats the
    prior on the users held out by ``folds``-fold cross-validation the prior alone ranks
    (``best_rounds`` 0).
    """

    params: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    grid: tuple[dict[str, Any], ...] = PARAM_GRID
    max_rounds: int = 300
    patience: int = 50
    folds: int = 3
    seed: int = 0
    features: list[str] = field(default_factory=list)
    best_rounds: int = 0
    prior_weight: float = 0.5
    chosen: dict[str, Any] = field(default_factory=dict)
    """The ``grid`` entry chosen by cross-validation."""
    valid_ndcg: float = float("nan")
    """Mean NDCG@10 of the held-out users' candidate lists over the folds (users with a
    positive among them)."""
    prior_ndcg: float = float("nan")
    """The same for the prior alone: what the trees add is the difference."""
    cold_trees: bool = True
    """Whether the trees rank users without history. A cold user's candidates are the
    popular source's list, and it is kept in that order unless the trees beat it on the
    held-out cold queries: new users get at least popularity, as in every baseline."""
    cold_gain: float = float("nan")
    """The trees' held-out NDCG@10 on cold queries minus the popular order's (NaN: none)."""

    def fit(self, rows: pd.DataFrame) -> Ranker:
        """Tree setting and rounds chosen by cross-validation over the users (each user,
        with all its queries in every slice, held out once; ``ranker_cv``), then refitted
        on all of them. The prior's weight is chosen on every query: the prior learns
        nothing from them, so none needs holding out, and a fifth of the users chose it
        noisily (0.8 with one seed on ML-100K, 0.35 with another). Queries without a
        positive teach lambdarank nothing: dropped."""
        rows = rows.iloc[np.argsort(query_key(rows), kind="stable")]
        rows = rows[(rows.groupby(query_key(rows))["label"].transform("max") > 0).to_numpy()]
        self.features = self.features or feature_names(rows.drop(columns="label"))
        users = rows["user_id"].unique()
        fold_of = pd.Series(user_folds(users, self.folds, self.seed), index=users)
        fold = fold_of.reindex(rows["user_id"]).to_numpy()
        parts = [(rows[fold != f], rows[fold == f]) for f in range(self.folds)]
        by_weight = {w: group_ndcg(rows, prior(rows, w)) for w in PRIOR_WEIGHTS}
        self.prior_weight = max(by_weight, key=by_weight.__getitem__)
        self.prior_ndcg = float(
            np.mean([group_ndcg(v, prior(v, self.prior_weight)) for _, v in parts])
        )
        self.valid_ndcg, held = self.prior_ndcg, []
        for extra in self.grid:
            got, rounds, predicted = self._cross_validate(parts, extra)
            if got > self.valid_ndcg:
                self.valid_ndcg, self.chosen, self.best_rounds = got, extra, rounds
                held = predicted
        self.cold_gain = _cold_gain([v for _, v in parts], held) if held else float("nan")
        self.cold_trees = bool(self.cold_gain > 0)  # NaN (no trees, no cold query): False
        self.booster = self._train(rows, self.best_rounds, self.chosen)
        logger.info(
            "ranker fitted",
            extra={
                "rounds": self.best_rounds,
                "params": self.chosen,
                "prior_weight": self.prior_weight,
                "valid_ndcg@10": self.valid_ndcg,
                "prior_valid_ndcg@10": self.prior_ndcg,
                "cold_trees": self.cold_trees,
                "cold_gain": self.cold_gain,
            },
        )
        return self

    def _cross_validate(
        self, parts: list[tuple[pd.DataFrame, pd.DataFrame]], extra: dict[str, Any]
    ) -> tuple[float, int, list[np.ndarray]]:
        """Mean held-out NDCG@10 of the ``extra`` setting over the folds, its trees stopped
        where the folds' mean validation curve peaks, that number of rounds, and each
        fold's held-out scores."""
        pairs = []
        for fit_part, val in parts:
            train = self._data(fit_part, extra)
            pairs.append((train, self._data(val, extra, reference=train)))
        boosters, rounds, _ = lockstep(self._params(extra), pairs, self.max_rounds, self.patience)
        scores = [self._predict(b, v, extra) for b, (_, v) in zip(boosters, parts, strict=True)]
        got = [group_ndcg(v, sc) for (_, v), sc in zip(parts, scores, strict=True)]
        return float(np.mean(got)), rounds, scores

    def _params(self, extra: dict[str, Any]) -> dict[str, Any]:
        """LightGBM's parameters for a grid entry (``from_prior`` is ours, not LightGBM's)."""
        own = {k: v for k, v in extra.items() if k != "from_prior"}
        return {**self.params, **own, "seed": self.seed}

    def _data(self, frame: pd.DataFrame, extra: dict[str, Any], reference: Any = None) -> Any:
        """``frame`` as a LightGBM data set, starting from the prior unless ``extra`` says
        the trees learn the whole order."""
        import lightgbm as lgb

        start = extra.get("from_prior", True)
        return lgb.Dataset(
            frame[self.features],
            frame["label"],
            group=query_sizes(frame),
            init_score=prior(frame, self.prior_weight) if start else None,
            reference=reference,
        )

    def _train(self, rows: pd.DataFrame, rounds: int, extra: dict[str, Any]) -> Any:
        """``rounds`` trees of the ``extra`` setting on ``rows``; None for none."""
        import lightgbm as lgb

        if rounds == 0:
            return None
        return lgb.train(self._params(extra), self._data(rows, extra), num_boost_round=rounds)

    def _predict(self, booster: Any, rows: pd.DataFrame, extra: dict[str, Any]) -> np.ndarray:
        """The prior, plus the trees' output when there are trees (which replaces the
        prior for trees that learned the whole order)."""
        base = prior(rows, self.prior_weight)
        if booster is None:
            return base
        raw = booster.predict(rows[self.features], num_threads=self.params["num_threads"])
        return base + raw if extra.get("from_prior", True) else raw

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        """Scores of ``rows``; ties (a cold user's rows, when the trees do not rank cold
        users) keep the merged order wherever the list is served (``served_order``)."""
        out = self._predict(self.booster, rows, self.chosen)
        if not self.cold_trees:
            out[cold_rows(rows)] = 0.0
        return out

    def importance(self) -> dict[str, float]:
        if self.booster is None:
            return {}
        gain = self.booster.feature_importance("gain")
        return dict(sorted(zip(self.features, gain.tolist(), strict=True), key=lambda x: -x[1]))


def cold_rows(rows: pd.DataFrame) -> np.ndarray:
    """Rows of users without history (their only candidates: the popular source's)."""
    cold = rows["user_events"] == 0 if "user_events" in rows else np.zeros(len(rows), bool)
    return np.asarray(cold)


def _cold_gain(held: list[pd.DataFrame], scores: list[np.ndarray]) -> float:
    """Held-out NDCG@10 of ``scores`` on the cold queries of ``held`` (a frame per fold, in
    merged order) minus the merged order's."""
    masks = [cold_rows(v) for v in held]
    if not any(m.any() for m in masks):
        return float("nan")
    rows = pd.concat([v[m] for v, m in zip(held, masks, strict=True)])
    ours = np.concatenate([s[m] for s, m in zip(scores, masks, strict=True)])
    return group_ndcg(rows, ours) - group_ndcg(rows, np.zeros(len(rows)))


class TwoStage:
    """Candidates then the ranker, behind the evaluator's interface: every catalog item is
    scored, the ranked candidates above all other items (those in popularity order)."""

    name = "two_stage"

    def __init__(self, generator: CandidateGenerator, ranker: Ranker, n: int = 200) -> None:
        self.generator = generator
        self.ranker = ranker
        self.n = n
        self.vocab = Vocab.build(generator.items.index)
        pop = generator.items["pop_all"].reindex(self.vocab.ids).fillna(0.0)
        self._floor = pop.to_numpy(np.float32) - 1e3

    @property
    def item_ids(self) -> list[str]:
        return self.vocab.ids

    def score(self, seen: pd.DataFrame, user_ids: list[str]) -> np.ndarray:
        states = self.generator.states(seen, user_ids)
        rows = rows_for(self.generator, states, self.generator.now, self.n)
        s = self.ranker.predict(rows)
        out = np.broadcast_to(self._floor, (len(user_ids), len(self._floor))).copy()
        r = pd.Index(user_ids).get_indexer(rows["user_id"])
        c = self.vocab.encode(rows["item_id"]) - 1
        ok = (r >= 0) & (c >= 0)
        out[r[ok], c[ok]] = served_order(r, s)[ok]
        return out


def served_order(users: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Scores that rank each user's rows as serving does: by score, ties to the earlier
    row (the merged list's order; a few trees leave many ties, which the evaluator would
    otherwise break by item id). Rows of a user are contiguous, in merged order."""
    order = np.lexsort((np.arange(len(scores)), -scores, users))
    start = np.r_[0, np.flatnonzero(np.diff(users[order])) + 1]
    rank = np.arange(len(order)) - np.repeat(start, np.diff(np.r_[start, len(order)]))
    out = np.empty(len(scores))
    out[order] = 1e6 - rank
    return out


def candidate_recall(
    rows: pd.DataFrame, target: pd.DataFrame, sources: list[str], n: int
) -> dict[str, float]:
    """Recall@``n`` of the merged list (its first ``n``) and of each source's own list
    (its first ``n`` ranks), averaged over the users with a target item, as the evaluator
    averages. ``rows``: candidates merged with no cap (``generate(states, large)``)."""
    target = target[["user_id", "item_id"]].astype(str).drop_duplicates()
    n_rel = target.groupby("user_id").size()
    hits = rows.merge(target, on=["user_id", "item_id"])
    masks = {"merged": hits["position"] <= n}
    masks |= {s: hits[f"src_{s}_rank"] <= n for s in sources}
    return {
        name: float(
            (hits[m].groupby("user_id").size().reindex(n_rel.index) / n_rel).fillna(0).mean()
        )
        for name, m in masks.items()
    }
