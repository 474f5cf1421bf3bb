"""The learned candidate sources: item-item neighbours (EASE weights) and the two-tower
retriever. Beside its ``candidates``, each scores any (user, item) pair
(:meth:`pair_scores`): the ranker reads both scores for every candidate, whichever source
found it. Imports numpy, pandas and (for the two-tower) faiss only, as
``rtrec.training.candidates`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from rtrec.training.candidates import Candidates, UserState, _Catalog, _top_unseen
from rtrec.training.vocab import Vocab


def ease_weights(events: pd.DataFrame, cat: Vocab, l2: float) -> np.ndarray:
    """EASE's item-item matrix B (zero diagonal) over ``cat``'s items, float32."""
    users = pd.Index(events["user_id"].astype(str).unique())
    rows = users.get_indexer(events["user_id"].astype(str))
    cols = cat.encode(events["item_id"].astype(str)) - 1
    x = np.zeros((len(users), len(cat)), dtype=np.float32)
    x[rows[cols >= 0], cols[cols >= 0]] = 1.0
    gram = (x.T @ x).astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


EXACT_MAX_ITEMS = 3000
"""Up to this many items every weight is kept (the scores are EASE's own, negative
weights included); a larger catalog keeps each item's ``neighbours`` best (memory grows
with items x neighbours)."""

RECENT_ITEMS = 10
"""The ranker's ``ii_recent`` feature sums the weights from this many latest items: a
user's fresh context, which the whole-history sum dilutes."""


class ItemItemSource:
    """Neighbours of the user's ``recent`` latest items: each item's ``neighbours`` best
    EASE weights (all of them on a small catalog), kept in a ``[items, neighbours]`` table
    at fit time; a user's score for an item is the sum of its weights from the user's
    items."""

    name = "item_item"

    def __init__(
        self,
        *,
        l2: float = 500.0,
        neighbours: int = 1000,
        recent: int = 500,
        exact_max: int = EXACT_MAX_ITEMS,
    ) -> None:
        self.l2 = l2
        self.neighbours = neighbours
        self.recent = recent
        self.exact_max = exact_max
        """Catalogs up to this size keep every weight (``EXACT_MAX_ITEMS``); 0 always
        keeps ``neighbours`` per item, which bounds a served request's work."""

    def fit(self, events: pd.DataFrame) -> ItemItemSource:
        self._cat = _Catalog(events)
        b = ease_weights(events, self._cat.vocab, self.l2)
        k = len(b) if len(b) <= self.exact_max else min(self.neighbours, len(b))
        part = np.argpartition(-b, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(b), 0), int)
        self._nbr = part.astype(np.int32)
        self._w = np.take_along_axis(b, part, 1)
        return self

    def scores(self, state: UserState) -> np.ndarray:
        """The user's score of every catalog position (0 where no neighbour reaches)."""
        out = np.zeros(len(self._cat.ids), dtype=np.float64)
        mine = self._cat.positions(state.items[: self.recent])
        if len(mine):
            np.add.at(out, self._nbr[mine].ravel(), self._w[mine].ravel())
        return out

    def candidates(self, states: Sequence[UserState], n: int) -> list[Candidates]:
        out = []
        for s in states:
            scores = self.scores(s)
            unreached = np.flatnonzero(scores == 0)
            seen = np.union1d(self._cat.positions(s.items), unreached)
            out.append(_top_unseen(scores, self._cat.ids, seen, n))
        return out

    def weights_to(self, state: UserState, targets: np.ndarray) -> np.ndarray:
        """``[history items, targets]`` weights from the user's ``recent`` latest items
        (newest first, the catalog's only) to catalog positions ``targets`` (0 where the
        table keeps no weight)."""
        mine = self._cat.positions(state.items[: self.recent])
        lookup = np.full(len(self._cat.ids), -1, dtype=np.int64)
        lookup[targets] = np.arange(len(targets))
        col = lookup[self._nbr[mine]]
        row = np.broadcast_to(np.arange(len(mine))[:, None], col.shape)
        ok = col >= 0
        out = np.zeros((len(mine), len(targets)), dtype=np.float32)
        out[row[ok], col[ok]] = self._w[mine][ok]
        return out

    def pair_features(
        self, states: Sequence[UserState], users: np.ndarray, items: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Aggregates of each (``users[r]``, ``items[r]``)'s weights from the user's items:
        ``ii_score`` (their sum, the source's score), ``ii_max`` (the strongest single
        link), ``ii_links`` (how many history items link positively) and ``ii_recent``
        (the sum from the latest ``RECENT_ITEMS``). The sum alone cannot tell one strong
        companion from many weak ones, nor an old taste from a fresh one. NaN for an item
        outside the catalog."""
        by_user = {s.user_id: s for s in states}
        pos = self._cat.vocab.encode(items) - 1
        names = ("ii_score", "ii_max", "ii_links", "ii_recent")
        out = {n: np.full(len(items), np.nan) for n in names}
        for u, idx in pd.Series(users).groupby(users).indices.items():
            idx = idx[pos[idx] >= 0]
            w = self.weights_to(by_user[u], pos[idx])
            if not len(w):
                out["ii_score"][idx] = out["ii_recent"][idx] = out["ii_links"][idx] = 0.0
                continue
            out["ii_score"][idx] = w.sum(axis=0)
            out["ii_max"][idx] = w.max(axis=0)
            out["ii_links"][idx] = (w > 0).sum(axis=0)
            out["ii_recent"][idx] = w[:RECENT_ITEMS].sum(axis=0)
        return out

    def pair_scores(
        self, states: Sequence[UserState], users: np.ndarray, items: np.ndarray
    ) -> np.ndarray:
        """Score of each (``users[r]``, ``items[r]``); NaN for an item outside the catalog."""
        return self.pair_features(states, users, items)["ii_score"]


class TwoTowerSource:
    """The two-tower retriever: the user tower's query searched in a FAISS index of the
    item keys, as serving does (``ModelBundle.user_vectors`` / ``search``)."""

    name = "two_tower"

    def __init__(self, model: Any) -> None:
        self.model = model

    def fit(self, events: pd.DataFrame) -> TwoTowerSource:
        from rtrec.training.index import build_index

        self._events = events
        self._keys = self.model.item_keys()
        self._index = build_index(self._keys, use_gpu=False)
        self._ids = self.model.item_ids
        return self

    def queries(self, states: Sequence[UserState]) -> np.ndarray:
        """Retrieval queries from each state's history (newest first) and the dense
        features of the user's latest fit event, as the evaluator builds them."""
        enc = self.model.encoders
        ids = [s.user_id for s in states]
        _, _, dense = enc.user_state(self._events, ids)
        hist = enc.items.encode_lists([list(s.items) for s in states], enc.history_len)
        return self.model.user_vectors(enc.users.encode(ids), hist, dense)

    def candidates(self, states: Sequence[UserState], n: int) -> list[Candidates]:
        if not states:
            return []
        vecs = self.queries(states)
        k = min(n + max(len(s.items) for s in states), self._index.ntotal)
        scores, rows = self._index.search(vecs, k)
        out = []
        for s, sc, row in zip(states, scores, rows, strict=True):
            seen = set(map(str, s.items))
            keep = [(self._ids[r], v) for r, v in zip(row, sc, strict=True) if r >= 0]
            keep = [(i, v) for i, v in keep if i not in seen][:n]
            out.append(
                Candidates(
                    np.array([i for i, _ in keep], dtype=object),
                    np.array([v for _, v in keep], dtype=np.float32),
                )
            )
        return out

    def pair_scores(
        self, states: Sequence[UserState], users: np.ndarray, items: np.ndarray
    ) -> np.ndarray:
        """Query . key of each (``users[r]``, ``items[r]``); NaN for a cold user or an item
        the model does not know (neither has a meaningful tower output)."""
        out = np.full(len(items), np.nan)
        warm = [s for s in states if not s.cold]
        if not warm:
            return out
        vecs = self.queries(warm)
        row = pd.Index([s.user_id for s in warm]).get_indexer(users)
        pos = pd.Index(self._ids).get_indexer(items)
        ok = (row >= 0) & (pos >= 0)
        out[ok] = np.einsum("ij,ij->i", vecs[row[ok]], self._keys[pos[ok]])
        return out
