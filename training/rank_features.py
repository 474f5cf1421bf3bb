"""The ranker's features of each (user, candidate) at a moment ``now``.

One computation for training rows and for requests: :func:`candidate_features` takes the
candidates (with their provenance from ``rtrec.training.candidates.merge``), a user table
and an item table, each built from events strictly before ``now``
(:func:`user_table`, :func:`item_table`). The user table is built from user states: the
offline evaluation takes them from the event log, the product's ranker training set from
Feast's historical retrieval of the user stream rows (``rtrec.training.pit_states``), a
request from the online row; where the numbers come from changes, not how a feature is
computed.

Counts are turned into shares of all events in their window: the ranker is fitted on an
earlier, smaller state than it is applied to, and shares keep their scale across the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from rtrec.training.candidates import (
    DAY_MS,
    USER_WINDOWS_MS,
    Candidates,
    Source,
    UserState,
    merge,
    user_states,
    window_counts,
)
from rtrec.training.learned_sources import ItemItemSource, TwoTowerSource

WINDOWS_DAYS = {"7d": 7.0, "30d": 30.0}


def item_table(events: pd.DataFrame, now: int) -> pd.DataFrame:
    """Per item, from events before ``now``: share of all events overall and in each recent
    window, distinct users, and age (days since its first event)."""
    ev = events[events["ts"].to_numpy() < now]
    items = ev["item_id"].astype(str)
    ts = ev["ts"].to_numpy(dtype=np.int64)
    out = pd.DataFrame({"pop_all": items.value_counts(normalize=True)})
    for name, days in WINDOWS_DAYS.items():
        recent = items[ts >= now - days * DAY_MS]
        out[f"pop_{name}"] = recent.value_counts(normalize=True).reindex(out.index).fillna(0.0)
    out["item_users"] = (
        ev.assign(item_id=items).groupby("item_id")["user_id"].nunique().reindex(out.index)
    )
    first = pd.Series(ts, index=items.to_numpy()).groupby(level=0).min()
    out["item_age_days"] = (now - first.reindex(out.index)) / DAY_MS
    out.index.name = "item_id"
    return out


USER_FEATURES = ("user_events", *(f"user_events_{w}" for w in USER_WINDOWS_MS), "user_idle_days")


def user_features(state: UserState, now: int) -> list[float]:
    """One user's activity, ``USER_FEATURES`` in order: items in its state, events in each
    window ending at its latest event (the stream's counts), days since that event.

    Only what the online store holds of a user (its recent items, the window counts, the
    latest event's time), so a served request computes the same row
    (``rtrec.training.served_rank``) as a training row from the event log.
    """
    last = state.last_ts
    counts = state.counts or window_counts(state.ts)
    idle = (now - last) / DAY_MS if last is not None else np.nan
    return [float(len(state.items)), *(float(c) for c in counts), idle]


def user_table(states: Sequence[UserState], now: int) -> pd.DataFrame:
    """Per user, from its state: :func:`user_features`."""
    rows = {s.user_id: user_features(s, now) for s in states}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=list(USER_FEATURES))
    out.index.name = "user_id"
    return out


def user_popularity(states: Sequence[UserState], items: pd.DataFrame) -> np.ndarray:
    """Per state: the mean ``pop_all`` of its items, how mainstream the user's taste is.
    Beside the candidate's own popularity it tells the trees whether a popular candidate
    suits this user (its ratio, ``pop_vs_user``, is a feature too)."""
    pop = items["pop_all"]
    return np.array(
        [float(pop.reindex(s.items.astype(str)).mean()) if len(s.items) else np.nan for s in states]
    )


def category_match(
    cands: pd.DataFrame, states: Sequence[UserState], item_categories: dict[str, list[str]]
) -> np.ndarray:
    """Per candidate row: the share of the user's history in the candidate's categories."""
    shares: dict[str, dict[str, float]] = {}
    for s in states:
        counts: dict[str, float] = {}
        for item in s.items:
            for c in item_categories.get(str(item), []):
                counts[c] = counts.get(c, 0.0) + 1.0
        total = max(len(s.items), 1)
        shares[s.user_id] = {c: v / total for c, v in counts.items()}
    return np.array(
        [
            sum(shares.get(u, {}).get(c, 0.0) for c in item_categories.get(i, []))
            for u, i in zip(cands["user_id"], cands["item_id"], strict=True)
        ]
    )


def category_recency(
    cands: pd.DataFrame, states: Sequence[UserState], item_categories: dict[str, list[str]]
) -> np.ndarray:
    """Per candidate row: how long since the user last saw one of the candidate's
    categories, counted in the user's items (0: its latest item is in one; NaN: none of
    them in its history). Counted in items, not time: the online store keeps a user's
    recent items but only its latest event's time, and a request computes this row too."""
    latest: dict[str, dict[str, int]] = {}
    for s in states:
        seen: dict[str, int] = {}
        for j, item in enumerate(s.items):  # newest first
            for c in item_categories.get(str(item), []):
                seen.setdefault(c, j)
        latest[s.user_id] = seen
    none: dict[str, int] = {}
    cats = item_categories
    out = np.array(
        [
            min((latest.get(u, none).get(c, np.inf) for c in cats.get(i, [])), default=np.inf)
            for u, i in zip(cands["user_id"], cands["item_id"], strict=True)
        ],
        dtype=np.float64,
    )
    out[np.isinf(out)] = np.nan
    return out


@dataclass
class CandidateGenerator:
    """The sources, fitted on one state of the world, and how many each is asked for."""

    sources: list[Source]
    per_source: int = 200
    cold_source: str = "popular"
    """The only source asked for users without history (serving's fallback for them)."""
    item_categories: dict[str, list[str]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    """Each source's weight in the merge (``rtrec.training.candidates.merge``)."""
    history_limit: int | None = None
    """A user's latest items the sources and features see (None: all). The served system
    sets the online store's ``RECENT_ITEMS``: training then sees what a request sees."""

    def states(
        self, events: pd.DataFrame, user_ids: Sequence[str], *, before: int | None = None
    ) -> list[UserState]:
        """The users' states from ``events`` (``ts < before``), as this generator sees them."""
        return user_states(events, user_ids, before=before, limit=self.history_limit)

    def fit(self, events: pd.DataFrame) -> CandidateGenerator:
        for s in self.sources:
            s.fit(events)
        self.now = int(events["ts"].max()) + 1
        self.items = item_table(events, self.now)
        return self

    def answers(self, states: Sequence[UserState]) -> dict[str, list[Candidates]]:
        """Each source's list for each state (cold users: the cold source's alone)."""
        warm = [s for s in states if not s.cold]
        answers: dict[str, list[Candidates]] = {}
        for src in self.sources:
            asked = list(states) if src.name == self.cold_source else warm
            lists = src.candidates(asked, self.per_source)
            got = dict(zip([s.user_id for s in asked], lists, strict=True))
            empty = Candidates(np.array([], dtype=object), np.array([], dtype=np.float32))
            answers[src.name] = [got.get(s.user_id, empty) for s in states]
        return answers

    def generate(self, states: Sequence[UserState], n: int) -> pd.DataFrame:
        """Merged candidates, at most ``n`` per user, with pair scores beside provenance."""
        cands = merge(self.answers(states), [s.user_id for s in states], n, self.weights)
        return self._pair_scores(cands, states)

    def _pair_scores(self, cands: pd.DataFrame, states: Sequence[UserState]) -> pd.DataFrame:
        """Two-tower and item-item scores of every candidate, whichever source found it
        (the item-item ones with their aggregates, ``ItemItemSource.pair_features``)."""
        users, items = cands["user_id"].to_numpy(), cands["item_id"].to_numpy()
        tt = [s for s in self.sources if isinstance(s, TwoTowerSource)]
        cands["tt_score"] = tt[0].pair_scores(states, users, items) if tt else np.nan
        ii = [s for s in self.sources if isinstance(s, ItemItemSource)]
        if ii:
            for name, values in ii[0].pair_features(states, users, items).items():
                cands[name] = values
        else:
            cands["ii_score"] = np.nan
        return cands


def candidate_features(
    cands: pd.DataFrame,
    states: Sequence[UserState],
    items: pd.DataFrame,
    now: int,
    item_categories: dict[str, list[str]],
) -> pd.DataFrame:
    """The ranker's input rows, one per candidate, in ``cands``' order (see module doc)."""
    users = user_table(states, now)
    users["user_pop_mean"] = user_popularity(states, items)
    out = cands.join(users, on="user_id").join(items, on="item_id")
    out["pop_vs_user"] = np.log(out["pop_all"] / out["user_pop_mean"])
    # The item's age at the user's latest event; negative: it appeared since the user was
    # last active (new to this user, or, offline, out of the user's reach at the time).
    out["item_age_at_user_days"] = out["item_age_days"] - out["user_idle_days"]
    out["cat_match"] = category_match(cands, states, item_categories)
    out["cat_recency"] = category_recency(cands, states, item_categories)
    for col in ("tt_score", "ii_score"):
        grp = out.groupby("user_id")[col]
        out[f"{col}_gap"] = out[col] - grp.transform("max")
        out[f"{col}_rank"] = grp.rank(ascending=False, method="first")
    return out


def feature_names(frame: pd.DataFrame) -> list[str]:
    """The numeric feature columns of a :func:`candidate_features` frame."""
    skip = {"user_id", "item_id", "sources", "label", "best_rank", "position", "fold"}
    return [c for c in frame.columns if c not in skip]
