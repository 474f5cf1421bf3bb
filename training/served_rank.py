"""The ranker's features and scores for one request, in numpy: the same rows
``rank_features.candidate_features`` builds in training (tests compare the two on fixed
inputs) from the merged candidates of ``rtrec.training.served_sources``, then the prior
and LightGBM's trees (``ranker.Ranker.predict``, scored by ``served_trees``) on one small
dense matrix.

Per request: the two-tower and item-item pair scores of every candidate, the user's
activity (``rank_features.user_features``, the function training calls), the item
features frozen in the tables, the category match, and each score's gap and rank within
the list; the prior's per-list z-scores.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from rtrec.training.candidates import USER_WINDOWS_MS, UserState
from rtrec.training.learned_sources import RECENT_ITEMS as II_RECENT
from rtrec.training.rank_features import USER_FEATURES, user_features
from rtrec.training.served_categories import ServedCategories
from rtrec.training.served_sources import SOURCES, Merged, ServedSources
from rtrec.training.served_tables import ITEM_FEATURES, ServedTables
from rtrec.training.served_trees import Scorer, tree_scorer

from rtrec.events import EVENT_TYPES


def online_state(user_id: str, features: dict[str, Any], limit: int | None) -> UserState:
    """A user's state from its online feature row (the stream's user view): its recent
    items (newest first, the ``limit`` latest), its events in each ``USER_WINDOWS_MS``
    window summed over event types (``cnt_<type>_<window>``) and its latest event's time.
    What ``rank_features.user_features`` reads of a training state, from the store."""
    items = np.asarray([str(i) for i in (features.get("recent_items") or [])][:limit], object)
    counts = tuple(
        sum(int(features.get(f"cnt_{t}_{w}") or 0) for t in EVENT_TYPES) for w in USER_WINDOWS_MS
    )
    last = features.get("last_event_ms")
    ts = np.array([int(last)] if last and len(items) else [], dtype=np.int64)
    return UserState(user_id, items, ts, counts)


FEATURES = (
    *(f"src_{s}_{what}" for what in ("rank", "score") for s in sorted(SOURCES)),
    "n_sources",
    "tt_score",
    "ii_score",
    "ii_max",
    "ii_links",
    "ii_recent",
    *USER_FEATURES,
    "user_pop_mean",
    *ITEM_FEATURES,
    "pop_vs_user",
    "item_age_at_user_days",
    "cat_match",
    "cat_recency",
    "tt_score_gap",
    "tt_score_rank",
    "ii_score_gap",
    "ii_score_rank",
)
"""The ranker's features in the order training's rows hold them (``feature_names``)."""

Z_MISSING = -5.0
"""The prior's value for a candidate its scorer cannot score (``ranker._z``)."""


@dataclass(frozen=True)
class RankerModel:
    """The fitted ranker's parts the served path needs (``ranker.Ranker``)."""

    features: list[str]
    prior_weight: float
    from_prior: bool
    booster: Any | None
    """A ``lightgbm.Booster``; None when the prior alone ranks (no tree beat it)."""
    cold_trees: bool = True
    """``Ranker.cold_trees``: False keeps a user without history in the popular order."""


@dataclass(frozen=True)
class Ranked:
    """One request's ranked candidates: positions best first, their scores, and the
    merged candidates they came from."""

    pos: np.ndarray
    scores: np.ndarray
    merged: Merged


class ServedRanker:
    """Sources, features and the ranker over the served tables (``rank`` per request)."""

    def __init__(self, sources: ServedSources, model: RankerModel, item_keys: np.ndarray) -> None:
        self.sources = sources
        self.model = model
        self.item_keys = item_keys
        """The two-tower's retrieval keys ``[items, dim + 1]`` (``ModelBundle.item_keys``)."""
        self._local = threading.local()
        self._cats = ServedCategories(self.tables)
        booster = model.booster
        self._trees: Scorer | None = None
        self.trees_engine: str | None = None
        """Which engine scores the trees (``served_trees``); None: no trees."""
        if booster is not None:
            self._trees, self.trees_engine = tree_scorer(booster, len(model.features))

    @property
    def tables(self) -> ServedTables:
        return self.sources.t

    def search_k(self, history_len: int) -> int:
        """How many results the two-tower's search must return for ``history_len`` items."""
        return self.sources.p.per_source + history_len

    def search(
        self, bundle: Any, hist: np.ndarray, vec: np.ndarray
    ) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
        """A request's two-tower part, what :meth:`rank` takes: the query (``vec``,
        ``[1, dim + 1]``) and its index search's (scores, rows) of :meth:`search_k`
        results. (None, None) for a user without history: popularity only, no search."""
        if not len(hist):
            return None, None
        scores, rows = bundle.search_rows(vec, min(self.search_k(len(hist)), bundle.index.ntotal))
        return vec[0], (scores[0], rows[0])

    def rank(
        self,
        state: UserState,
        hist: np.ndarray,
        query: np.ndarray | None,
        search: tuple[np.ndarray, np.ndarray] | None,
        now: int,
    ) -> Ranked:
        """The user's candidates, ranked. ``hist``: ``state.items`` as catalog positions;
        ``query``: the two-tower's query vector and ``search`` its index search's (scores,
        rows) of :meth:`search_k` results (None: a cold user)."""
        merged = self.sources.merge(self.sources.answers(hist, search))
        if not len(merged.pos):
            return Ranked(merged.pos, np.zeros(0), merged)
        cols = self.columns(merged, state, hist, query, now)
        scores = self.predict(self.matrix(cols, len(merged.pos)), cols)
        order = np.argsort(-scores, kind="stable")
        return Ranked(merged.pos[order], scores[order], merged)

    def matrix(self, cols: dict[str, Any], rows: int) -> np.ndarray:
        """The ranker's input matrix ``[rows, features]`` (float64, C order)."""
        out = np.empty((rows, len(self.model.features)), dtype=np.float64)
        for j, name in enumerate(self.model.features):
            out[:, j] = cols[name]
        return out

    def columns(
        self, merged: Merged, state: UserState, hist: np.ndarray, query: np.ndarray | None, now: int
    ) -> dict[str, Any]:
        """Every feature of ``rank_features.candidate_features`` by name (a scalar where it
        is the user's, the same for every candidate)."""
        pos, t = merged.pos, self.tables
        cols: dict[str, Any] = {"n_sources": merged.n_sources}
        for s in SOURCES:
            cols[f"src_{s}_rank"] = merged.ranks.get(s, np.nan)
            cols[f"src_{s}_score"] = merged.scores.get(s, np.nan)
        cols["tt_score"] = self._tt_scores(pos, query, state)
        cols |= self._ii_features(pos, hist)
        cols |= dict(zip(USER_FEATURES, user_features(state, now), strict=True))
        item = t.item_features[pos]
        cols |= {name: item[:, j] for j, name in enumerate(ITEM_FEATURES)}
        known = hist[hist >= 0]
        # pandas' mean: NaN (an unknown item) filled with 0 in place, then one sum.
        pop_all = np.where(hist >= 0, t.item_features[np.maximum(hist, 0), 0], np.nan)
        count = int((~np.isnan(pop_all)).sum())
        filled = np.where(np.isnan(pop_all), 0.0, pop_all)
        cols["user_pop_mean"] = filled.sum() / count if count else np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            cols["pop_vs_user"] = np.log(cols["pop_all"] / cols["user_pop_mean"])
        cols["item_age_at_user_days"] = cols["item_age_days"] - cols["user_idle_days"]
        cols["cat_match"] = self._cats.match(pos, known, len(state.items))
        cols["cat_recency"] = self._cats.recency(pos, hist)
        for name in ("tt_score", "ii_score"):
            cols[f"{name}_gap"], cols[f"{name}_rank"] = _gap_and_rank(cols[name])
        return cols

    def _tt_scores(self, pos: np.ndarray, query: np.ndarray | None, state: UserState) -> np.ndarray:
        """``TwoTowerSource.pair_scores``: query . key; NaN for a cold user."""
        if query is None or state.cold:
            return np.full(len(pos), np.nan)
        return (self.item_keys[pos] @ query).astype(np.float64)

    def _ii_features(self, pos: np.ndarray, hist: np.ndarray) -> dict[str, np.ndarray]:
        """``ItemItemSource.pair_features``: the weights from the user's items to each
        candidate, summed, strongest, counted positive and summed over the latest few."""
        t = self.tables
        out = {n: np.full(len(pos), np.nan) for n in ("ii_score", "ii_max", "ii_links")}
        out["ii_recent"] = np.full(len(pos), np.nan)
        targets = np.flatnonzero(t.in_catalog[pos])
        mine = self.sources.ii_history(hist)
        if not len(mine):
            for n in ("ii_score", "ii_recent", "ii_links"):
                out[n][targets] = 0.0
            return out
        lookup = self._lookup()
        lookup[pos[targets]] = np.arange(len(targets))
        try:
            col = lookup[t.ii_nbr[mine]].ravel()
        finally:
            lookup[pos[targets]] = -1
        hit = np.flatnonzero(col >= 0)  # links from the history to a candidate
        col, w = col[hit], t.ii_w[mine].ravel()[hit]
        row = hit // t.ii_nbr.shape[1]
        size = len(targets)
        # float32 sums in history order, as training's column sums of its [history,
        # candidates] matrix (its zeros, where no link, change nothing).
        total = np.zeros(size, dtype=np.float32)
        np.add.at(total, col, w)
        recent = np.zeros(size, dtype=np.float32)
        first = row < II_RECENT
        np.add.at(recent, col[first], w[first])
        best = np.full(size, -np.inf, dtype=np.float32)
        np.maximum.at(best, col, w)
        # A candidate some history item does not link to has a 0 in that column.
        best = np.where(np.bincount(col, minlength=size) < len(mine), np.maximum(best, 0), best)
        out["ii_score"][targets] = total
        out["ii_max"][targets] = best
        out["ii_links"][targets] = np.bincount(col, weights=w > 0, minlength=size)
        out["ii_recent"][targets] = recent
        return out

    def _lookup(self) -> np.ndarray:
        """This thread's catalog-sized lookup (all -1 between uses), built once."""
        lookup = getattr(self._local, "lookup", None)
        if lookup is None:
            lookup = self._local.lookup = np.full(self.tables.size, -1, dtype=np.int64)
        return lookup

    def predict(self, x: np.ndarray, cols: dict[str, Any]) -> np.ndarray:
        """``Ranker.predict``: the prior (from ``cols``' two scores), plus the trees' output
        on ``x`` when there are trees (which replaces the prior for trees that learned the
        whole order)."""
        if not self.model.cold_trees and cols["user_events"] == 0:
            return np.zeros(len(x))  # ties: the merged (popular) order, as Ranker.predict
        w = self.model.prior_weight
        base = w * _z(cols["tt_score"]) + (1.0 - w) * _z(cols["ii_score"])
        if self._trees is None:
            return base
        raw = self._trees(x)
        return base + raw if self.model.from_prior else raw


def _z(x: np.ndarray) -> np.ndarray:
    """The list's standardised scores (ddof 1, as pandas); NaN -> ``Z_MISSING``."""
    valid = ~np.isnan(x)
    count = int(valid.sum())
    if count == 0:
        return np.full(len(x), Z_MISSING)
    mean = x[valid].sum() / count
    std = np.sqrt(((x[valid] - mean) ** 2).sum() / (count - 1)) if count > 1 else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (x - mean) / std
    return np.where(np.isnan(z), Z_MISSING, z)


def _gap_and_rank(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value minus the list's best, and its rank (1 = best; ties in list order;
    NaN stays NaN), as pandas' ``transform("max")`` and ``rank(method="first")``."""
    valid = np.flatnonzero(~np.isnan(x))
    rank = np.full(len(x), np.nan)
    if not len(valid):
        return np.full(len(x), np.nan), rank
    rank[valid[np.argsort(-x[valid], kind="stable")]] = np.arange(1, len(valid) + 1)
    return x - x[valid].max(), rank
