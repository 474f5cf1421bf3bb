"""The candidate sources and their merge for one request, in numpy over the served tables
(``rtrec.training.served_tables``): the same candidates, ranks and scores as the training
sources (``rtrec.training.candidates``, ``rtrec.training.learned_sources``) and
``candidates.merge`` give for the same user state, without pandas or a catalog-sized
array per request (tests compare the two on fixed inputs).

A user's history arrives as catalog positions, newest first (-1: unknown to the catalog).
Sums are accumulated in the order training adds them (``np.bincount`` adds each bin's
values in input order, as the sources' ``np.add.at`` and ``+=`` do), so the float scores
are the same bits, and ties are broken as training breaks them (lower position first).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from rtrec.training.candidates import top_indices
from rtrec.training.served_tables import ServedTables

SOURCES = ("two_tower", "item_item", "category", "popular")
COLD_SOURCE = "popular"


@dataclass(frozen=True)
class SourceParams:
    """What the fitted generator asked of each source (saved with the ranker)."""

    per_source: int
    n: int
    """Merged candidates kept (``TwoStage.n``)."""
    weights: dict[str, float]
    ii_recent: int
    cat_recent: int
    history_limit: int | None


@dataclass(frozen=True)
class Answer:
    """One source's list: catalog positions, best first, and their float32 scores."""

    pos: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> Answer:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


@dataclass(frozen=True)
class Merged:
    """The merged candidates of one user, best place first: positions, per-source rank
    and score (NaN where the source did not return it), how many sources found each."""

    pos: np.ndarray
    ranks: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    n_sources: np.ndarray


DENSE_MAX = 1 << 17
"""Up to this many items a request's sums go into one catalog-sized array (it stays in
cache); above, the positions it reaches are sorted out (random access into a large
catalog-sized array costs more than the sort)."""


def _sums(idx: np.ndarray, vals: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct positions of ``idx``, the sum of ``vals`` at each), each sum added in
    input order (``np.bincount`` adds a bin's values in the order they come)."""
    if n <= DENSE_MAX:
        sums = np.bincount(idx, weights=vals, minlength=n)
        pos = np.flatnonzero(sums)
        return pos, sums[pos]
    pos, inverse = np.unique(idx, return_inverse=True)
    return pos, np.bincount(inverse, weights=vals, minlength=len(pos))


def _top(pos: np.ndarray, scores: np.ndarray, seen: np.ndarray, n: int) -> Answer:
    """The ``n`` best of ``pos`` (distinct positions, any order) where ``seen`` (a
    catalog-sized mask) is False."""
    keep = ~seen[pos]
    pos, scores = pos[keep], scores[keep]
    best = top_indices(scores, pos, n)
    return Answer(pos[best].astype(np.int64), scores[best].astype(np.float32))


class ServedSources:
    """The four sources of the served generator, answering one user at a time."""

    def __init__(self, tables: ServedTables, params: SourceParams) -> None:
        self.t = tables
        self.p = params
        self._cats = len(tables.cat_ptr) - 1
        self._cat_trend = tables.trend[tables.cat_pos]
        """Each listed item's trend score beside it: read in order, not scattered."""
        self._cat_items, inverse = np.unique(tables.cat_pos, return_inverse=True)
        self._cat_local = inverse.astype(np.int64)
        """The distinct items the category lists hold (ascending positions), and each
        listed slot's index among them: a request's sums go into an array as long as
        that set (a few thousand) in input order, with no sort, and ascending local
        index is ascending position, as training breaks ties."""
        self._local = threading.local()

    def item_item(self, hist: np.ndarray, seen: np.ndarray) -> Answer:
        """``ItemItemSource.candidates``: neighbours of the ``ii_recent`` latest items."""
        mine = self.ii_history(hist)
        if not len(mine):
            return Answer.empty()
        pos, sums = _sums(self.t.ii_nbr[mine].ravel(), self.t.ii_w[mine].ravel(), self.t.size)
        nonzero = sums != 0
        return _top(pos[nonzero], sums[nonzero], seen, self.p.per_source)

    def ii_history(self, hist: np.ndarray) -> np.ndarray:
        """The item-item source's history: its ``ii_recent`` latest items in its catalog."""
        mine = hist[: self.p.ii_recent]
        mine = mine[mine >= 0]
        return mine[self.t.in_catalog[mine]]

    def category(self, hist: np.ndarray, seen: np.ndarray) -> Answer:
        """``CategoryTrendingSource.candidates``: each touched category's list, weighted by
        its share of the ``cat_recent`` latest items' categories."""
        recent = hist[: self.p.cat_recent]
        cats, _ = self.t.categories_of(recent[recent >= 0])
        if not len(cats):
            return Answer.empty()
        uniq, first, counts = np.unique(cats, return_index=True, return_counts=True)
        order = np.argsort(first, kind="stable")  # first appearance, as training's dict
        share = counts[order] / float(counts.sum())
        listed = uniq[order] < self._cats
        cats, share = uniq[order][listed], share[listed]
        if not len(cats):
            return Answer.empty()
        start, end = self.t.cat_ptr[cats], self.t.cat_ptr[cats + 1]
        lengths = end - start
        offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        slots = np.repeat(start, lengths) + offsets
        # Category by category, as training adds them: each bin's sum in this order.
        vals = np.repeat(share, lengths) * self._cat_trend[slots]
        local, sums = _sums(self._cat_local[slots], vals, len(self._cat_items))
        pos = self._cat_items[local]
        positive = sums > 0
        return _top(pos[positive], sums[positive], seen, self.p.per_source)

    def popular(self, seen: np.ndarray, n_seen: int) -> Answer:
        """``PopularSource.candidates``: the popularity order without the seen items."""
        head = self.t.pop_order[: self.p.per_source + n_seen]
        pos = head[~seen[head]][: self.p.per_source].astype(np.int64)
        return Answer(pos, self.t.pop_score[pos].astype(np.float32))

    def two_tower(self, rows: np.ndarray, scores: np.ndarray, seen: np.ndarray) -> Answer:
        """``TwoTowerSource.candidates`` from an index search of the user's query (``rows``
        -1 where it had no result): the first ``per_source`` unseen items."""
        ok = rows >= 0
        ok[ok] = ~seen[rows[ok]]
        keep = np.flatnonzero(ok)[: self.p.per_source]
        return Answer(rows[keep].astype(np.int64), scores[keep].astype(np.float32))

    def answers(
        self, hist: np.ndarray, search: tuple[np.ndarray, np.ndarray] | None
    ) -> dict[str, Answer]:
        """Every source's list for a user with history ``hist`` (positions, newest first);
        ``search``: the two-tower index's (scores, rows) for the user's query. A user
        without history gets popularity only."""
        known = hist[hist >= 0]
        seen = self._seen()
        seen[known] = True  # this thread's mask, cleared again below
        try:
            if not len(hist):
                empty = {name: Answer.empty() for name in SOURCES if name != COLD_SOURCE}
                return empty | {COLD_SOURCE: self.popular(seen, len(known))}
            tt = self.two_tower(search[1], search[0], seen) if search is not None else None
            return {
                "two_tower": tt if tt is not None else Answer.empty(),
                "item_item": self.item_item(hist, seen),
                "category": self.category(hist, seen),
                "popular": self.popular(seen, len(known)),
            }
        finally:
            seen[known] = False

    def _seen(self) -> np.ndarray:
        """This thread's catalog-sized mask (all False between requests), made once."""
        mask = getattr(self._local, "seen", None)
        if mask is None:
            mask = self._local.seen = np.zeros(self.t.size, dtype=bool)
        return mask

    def merge(self, answers: dict[str, Answer]) -> Merged:
        """``candidates.merge`` for one user: weighted round robin, at most ``n``."""
        parts = [(name, a) for name, a in answers.items() if len(a.pos)]
        if not parts:
            empty = np.zeros(0)
            return Merged(np.zeros(0, np.int64), {}, {}, empty)
        all_pos = np.concatenate([a.pos for _, a in parts])
        uniq, inverse = np.unique(all_pos, return_inverse=True)
        best = np.full(len(uniq), np.inf, dtype=np.float32)
        ranks, scores, start = {}, {}, 0
        for name, a in parts:
            k = len(a.pos)
            rank = np.arange(1, k + 1, dtype=np.float32)
            weight = np.float32(self.p.weights.get(name, 1.0))
            mine = inverse[start : start + k]
            np.minimum.at(best, mine, rank / weight)
            ranks[name] = np.full(len(uniq), np.nan)
            ranks[name][mine] = rank
            scores[name] = np.full(len(uniq), np.nan)
            scores[name][mine] = a.scores
            start += k
        n_sources = np.bincount(inverse, minlength=len(uniq))
        order = np.lexsort((uniq, -n_sources, best))[: self.p.n]
        return Merged(
            uniq[order],
            {s: r[order] for s, r in ranks.items()},
            {s: v[order] for s, v in scores.items()},
            n_sources[order].astype(np.float64),
        )
