"""Candidate generation, the first stage of two-stage recommendations.

Why several sources: each finds what the others miss. The two-tower retriever generalises
from the whole history; item-item neighbours (EASE weights, Steck 2019) catch the close
companions of what the user just did; category trending follows what is hot in the user's
tastes; popularity is all a cold user can get. Each source is a small class behind one
interface, ``fit(events)`` then ``candidates(states, n)``, and :func:`merge` unions their
lists with the provenance of every candidate (which sources found it, at which rank and
score), which the ranker (``rtrec.training.ranker``) reads as features.

Everything a source needs at request time is precomputed in ``fit`` into in-memory tables
(neighbour lists, per-category rankings), so a request costs table look-ups only. The
user's state is passed in (:class:`UserState`), never read from the fit events: the same
source answers for the state of any moment, which is what the point-in-time training set
(``rtrec.training.ranker.ranking_rows``, ``rtrec.training.pit_states``) relies on.
Imports numpy, pandas and (for the two-tower source) faiss only: the GPU host imports
this module too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from rtrec.training.vocab import Vocab

DAY_MS = 86_400_000


USER_WINDOWS_MS = {"24h": DAY_MS, "7d": 7 * DAY_MS}
"""The user's activity windows: the stream's count windows (``rtrec.features.WINDOWS``),
each ending at the user's latest event, so the online features hold the same counts."""


@dataclass(frozen=True)
class UserState:
    """What is known of one user at a moment: item ids and times, newest first, and its
    events in each ``USER_WINDOWS_MS`` window (of all its events, before any ``limit``).

    A served state (``rtrec.training.served_rank``) carries only the latest time in
    ``ts``: the online store keeps the items, the window counts and that time."""

    user_id: str
    items: np.ndarray
    ts: np.ndarray
    counts: tuple[int, ...] = ()

    @property
    def cold(self) -> bool:
        return len(self.items) == 0

    @property
    def last_ts(self) -> int | None:
        return int(self.ts[0]) if len(self.ts) else None


def window_counts(ts: np.ndarray) -> tuple[int, ...]:
    """Events (times ``ts``, newest first) in each window ending at the latest one, as the
    stream counts them: times after ``latest - span``."""
    if not len(ts):
        return tuple(0 for _ in USER_WINDOWS_MS)
    return tuple(int((ts > ts[0] - span).sum()) for span in USER_WINDOWS_MS.values())


def user_states(
    events: pd.DataFrame,
    user_ids: Sequence[str],
    *,
    before: int | None = None,
    limit: int | None = None,
) -> list[UserState]:
    """Each user's state from ``events`` with ``ts < before`` (all of them when None),
    its ``limit`` latest events only when set (what the online store keeps of a user)."""
    if before is not None:
        events = events[events["ts"].to_numpy() < before]
    frame = pd.DataFrame(
        {
            "user_id": events["user_id"].astype(str).to_numpy(),
            "item_id": events["item_id"].astype(str).to_numpy(),
            "ts": events["ts"].to_numpy(dtype=np.int64),
        }
    ).sort_values(["user_id", "ts"], ascending=[True, False], kind="stable")
    groups = {
        u: (g["item_id"].to_numpy()[:limit], g["ts"].to_numpy()[:limit], g["ts"].to_numpy())
        for u, g in frame.groupby("user_id", sort=False)
    }
    empty = (np.array([], dtype=object), np.array([], dtype=np.int64), np.array([], np.int64))
    out = []
    for u in user_ids:
        items, ts, every = groups.get(str(u), empty)
        out.append(UserState(str(u), items, ts, window_counts(every)))
    return out


@dataclass(frozen=True)
class Candidates:
    """One source's answer for one user: item ids, best first, and their scores."""

    items: np.ndarray
    scores: np.ndarray


class Source(Protocol):
    name: str

    def fit(self, events: pd.DataFrame) -> Source: ...

    def candidates(self, states: Sequence[UserState], n: int) -> list[Candidates]: ...


def top_positions(scores: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` best of ``positions`` by ``scores`` (aligned with them), ties to the lower
    position, best first.

    A total order, not argpartition's arbitrary pick among ties at the cut: the served
    path (``rtrec.training.served_sources``) answers from other data structures and must
    return the same candidates.
    """
    return positions[top_indices(scores, positions, n)]


def top_indices(scores: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """:func:`top_positions` as indices into ``scores`` and ``positions``."""
    k = min(n, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    keep = np.arange(len(scores))
    if k < len(scores):
        kth = np.partition(-scores, k - 1)[k - 1]
        keep = np.flatnonzero(-scores <= kth)
    return keep[np.lexsort((positions[keep], -scores[keep]))[:k]]


def _top_unseen(scores: np.ndarray, ids: list[str], seen: np.ndarray, n: int) -> Candidates:
    """The ``n`` best-scored catalog positions outside ``seen`` (positions), best first
    (ties: the lower position, i.e. the smaller id of the sorted vocabulary)."""
    scores = scores.astype(np.float64, copy=True)
    scores[seen] = -np.inf
    finite = np.flatnonzero(np.isfinite(scores))
    order = top_positions(scores[finite], finite, n)
    return Candidates(np.asarray(ids, dtype=object)[order], scores[order].astype(np.float32))


class _Catalog:
    """The items of the fit events as positions 0..n-1, and each user's seen positions."""

    def __init__(self, events: pd.DataFrame) -> None:
        self.vocab = Vocab.build(events["item_id"].astype(str))
        self.ids = self.vocab.ids

    def positions(self, items: np.ndarray) -> np.ndarray:
        idx = self.vocab.encode(items) - 1
        return idx[idx >= 0]


def recency_counts(events: pd.DataFrame, now: int, half_life_days: float) -> pd.Series:
    """Events per item before ``now``, each weighted by 2^(-age / half-life)."""
    ts = events["ts"].to_numpy(dtype=np.int64)
    keep = ts < now
    age_days = (now - ts[keep]) / DAY_MS
    weight = np.exp2(-age_days / half_life_days)
    items = events["item_id"].astype(str).to_numpy()[keep]
    return pd.Series(weight, index=items).groupby(level=0).sum()


class PopularSource:
    """Recently popular items (time-decayed counts): every user's safety net and all a
    cold user can get."""

    name = "popular"

    def __init__(self, half_life_days: float = 14.0) -> None:
        self.half_life_days = half_life_days

    def fit(self, events: pd.DataFrame) -> PopularSource:
        self._cat = _Catalog(events)
        now = int(events["ts"].max()) + 1
        counts = recency_counts(events, now, self.half_life_days)
        self._scores = counts.reindex(self._cat.ids).fillna(0.0).to_numpy(np.float64)
        return self

    def candidates(self, states: Sequence[UserState], n: int) -> list[Candidates]:
        cat = self._cat
        return [_top_unseen(self._scores, cat.ids, cat.positions(s.items), n) for s in states]


class CategoryTrendingSource:
    """What is trending in the categories the user engages with: slots are shared out by
    the user's category shares over its ``recent`` latest items."""

    name = "category"

    def __init__(
        self,
        item_categories: dict[str, list[str]],
        *,
        half_life_days: float = 7.0,
        recent: int = 50,
        per_category: int | None = None,
    ) -> None:
        self.item_categories = item_categories
        self.half_life_days = half_life_days
        self.recent = recent
        self.per_category = per_category
        """Each category's most trending items considered (None: all): a request then
        scores a bounded list per category, whatever the catalog's size."""

    def fit(self, events: pd.DataFrame) -> CategoryTrendingSource:
        self._cat = _Catalog(events)
        now = int(events["ts"].max()) + 1
        counts = recency_counts(events, now, self.half_life_days)
        pop = counts.reindex(self._cat.ids).fillna(0.0).to_numpy(np.float64)
        self._pop = pop / max(pop.max(), 1e-12)
        by_cat: dict[str, list[int]] = {}
        for j, item in enumerate(self._cat.ids):
            for c in self.item_categories.get(item, []):
                by_cat.setdefault(c, []).append(j)
        self._by_cat = {c: self._trimmed(np.asarray(js)) for c, js in by_cat.items()}
        return self

    def _trimmed(self, positions: np.ndarray) -> np.ndarray:
        """A category's positions, its ``per_category`` most trending only when set."""
        if self.per_category is None:
            return positions
        return np.sort(top_positions(self._pop[positions], positions, self.per_category))

    def candidates(self, states: Sequence[UserState], n: int) -> list[Candidates]:
        return [self._one(s, n) for s in states]

    def _one(self, state: UserState, n: int) -> Candidates:
        shares: dict[str, float] = {}
        for item in state.items[: self.recent]:
            for c in self.item_categories.get(str(item), []):
                shares[c] = shares.get(c, 0.0) + 1.0
        scores = np.zeros(len(self._cat.ids))
        total = sum(shares.values())
        for c, count in shares.items():
            js = self._by_cat.get(c)
            if js is not None:
                scores[js] += (count / total) * self._pop[js]
        # Items outside every category the user touched are not this source's answer.
        seen = np.union1d(self._cat.positions(state.items), np.flatnonzero(scores <= 0))
        return _top_unseen(scores, self._cat.ids, seen, n)


def item_categories(events: pd.DataFrame) -> dict[str, list[str]]:
    """Each item's categories from the ``item_categories`` column (empty when absent)."""
    if "item_categories" not in events.columns:
        return {}
    first = events.drop_duplicates("item_id")
    return {
        str(i): [str(c) for c in cs] if cs is not None else []
        for i, cs in zip(first["item_id"], first["item_categories"], strict=True)
    }


def merge(
    answers: dict[str, list[Candidates]],
    user_ids: Sequence[str],
    n: int,
    weights: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Union of the sources' lists, de-duplicated, at most ``n`` per user.

    Weighted round robin: a candidate's place is its best rank in any source divided by
    that source's weight (default 1), so every source gets its first picks in before any
    source's tail, and a weak source (weight < 1) gets fewer of the ``n`` places. One row
    per (user, item): ``src_<name>_rank`` (1 = first, NaN when that source did not return it),
    ``src_<name>_score``, ``sources`` (the names that found it, ``+``-joined) and
    ``position`` in the merged list.
    """
    cols: dict[str, list[np.ndarray]] = {"user_id": [], "item_id": [], "source": []}
    cols |= {"rank": [], "score": [], "weight": []}
    for name, lists in answers.items():
        for u, c in zip(user_ids, lists, strict=True):
            k = len(c.items)
            cols["user_id"].append(np.full(k, u, dtype=object))
            cols["item_id"].append(c.items.astype(str).astype(object))
            cols["source"].append(np.full(k, name, dtype=object))
            cols["rank"].append(np.arange(1, k + 1, dtype=np.float32))
            cols["weight"].append(np.full(k, (weights or {}).get(name, 1.0), dtype=np.float32))
            cols["score"].append(np.asarray(c.scores, dtype=np.float32))
    long = pd.DataFrame({k: np.concatenate(v) if v else [] for k, v in cols.items()})
    if long.empty:
        raise ValueError("merge: no source returned a candidate for any user")
    long["place"] = long["rank"] / long["weight"]
    best = long.groupby(["user_id", "item_id"])["place"].min()
    wide = long.pivot_table(
        index=["user_id", "item_id"], columns="source", values=["rank", "score"], aggfunc="first"
    )
    wide.columns = [f"src_{src}_{what}" for what, src in wide.columns]
    wide = wide.reset_index()
    names = [s for s in answers if f"src_{s}_rank" in wide]
    found = wide[[f"src_{s}_rank" for s in names]].notna().to_numpy()
    wide["sources"] = ["+".join(np.asarray(names)[row]) for row in found]
    wide["n_sources"] = found.sum(axis=1)
    wide["best_rank"] = best.reindex(pd.MultiIndex.from_frame(wide[["user_id", "item_id"]])).values
    # Ties (the same best rank in several sources) go to what more sources agree on.
    wide = wide.sort_values(
        ["user_id", "best_rank", "n_sources", "item_id"],
        ascending=[True, True, False, True],
        kind="stable",
    )
    wide["position"] = wide.groupby("user_id").cumcount() + 1
    wide = wide[wide["position"] <= n]
    for s in answers:
        for what in ("rank", "score"):
            if f"src_{s}_{what}" not in wide:
                wide[f"src_{s}_{what}"] = np.nan
    return wide.reset_index(drop=True)
