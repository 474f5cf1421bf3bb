"""A seeded, vectorised interaction generator with learnable structure and a drift knob.

Why synthetic data: the platform must be demonstrable and testable without downloads,
and drift monitoring needs a data set whose distribution changes at a *known* time.

The model behind the numbers:

- items have a primary (sometimes also a secondary) category and a Zipf popularity;
- users belong to taste clusters, each favouring a few categories; with probability
  ``taste_strength`` a fresh pick comes from the user's favourite categories, otherwise
  from global popularity — so user history predicts future items (learnable);
- events come in sessions (bursts seconds apart); within a session the next event
  repeats the previous item (funnel: view -> click -> add_to_cart -> purchase) or moves
  to its successor in a fixed per-category order (a sequential signal), else re-picks;
- an optional :class:`ShiftConfig` changes the world at ``at_ts``: popularity mass moves
  to other items, new items are created and become popular, some users change taste.

Everything is numpy over whole arrays; 1M events take about a second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rtrec.data.dataset import Dataset
from rtrec.errors import InvalidInput

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
_CATEGORY_NAMES = (
    "electronics", "books", "fashion", "home", "sports", "toys", "beauty", "grocery",
    "garden", "music", "movies", "games", "health", "auto", "pets", "office", "baby",
    "jewelry", "outdoor", "tools", "travel", "art", "food", "crafts",
)  # fmt: skip
_OCCUPATIONS = (
    "student", "engineer", "teacher", "artist", "healthcare", "sales", "retired",
    "manager", "writer", "technician", "other",
)  # fmt: skip


class ShiftConfig(BaseModel):
    """A distribution change at one instant, so drift detection has ground truth."""

    model_config = ConfigDict(extra="forbid")

    at_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    """Where the shift happens, as a fraction of the time span (ignored if ``at_ts`` set)."""
    at_ts: int | None = None
    """Absolute shift time (ms); overrides ``at_fraction``."""
    popularity_shift: float = Field(0.6, ge=0.0, le=1.0)
    """Share of item popularity mass handed to other (randomly re-ranked) items."""
    new_items: int = Field(50, ge=0)
    """Items created at the shift; they draw ``new_items_share`` of all picks afterwards."""
    new_items_share: float = Field(0.25, ge=0.0, lt=1.0)
    """Popularity mass the new items take after the shift."""
    new_item_categories: int = Field(2, ge=1)
    """New items concentrate in this many categories (a trend), moving the category mix."""
    taste_drift: float = Field(0.3, ge=0.0, le=1.0)
    """Share of users who move to another taste cluster at the shift."""


class SyntheticConfig(BaseModel):
    """Knobs of :func:`generate`; the defaults make about a month of events."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 42
    """Same seed -> identical frames."""
    n_users: int = Field(20_000, ge=1)
    n_items: int = Field(10_000, ge=1)
    """Catalog size before the shift (new shift items come on top)."""
    n_categories: int = Field(24, ge=2)
    n_events: int = Field(1_000_000, ge=1)
    start_ts: int = Field(1_756_684_800_000, ge=0)
    """First possible event time (ms); default 2025-09-01T00:00Z, safely in the past."""
    days: float = Field(30.0, gt=0.0)
    zipf_exponent: float = Field(1.0, ge=0.0)
    """Item popularity ~ 1 / rank**s; 1.0 puts about half the picks on the top 1% items."""
    n_clusters: int = Field(12, ge=1)
    """Taste clusters users belong to."""
    categories_per_cluster: int = Field(3, ge=1)
    taste_strength: float = Field(0.85, ge=0.0, le=1.0)
    """Probability a fresh pick comes from the user's favourite categories."""
    activity_sigma: float = Field(1.0, ge=0.0)
    """Lognormal spread of user activity (a few heavy users, many light ones)."""
    new_user_share: float = Field(0.1, ge=0.0, le=1.0)
    """Users who sign up during the span (cold-start users)."""
    session_mean_events: float = Field(6.0, ge=1.0)
    """Mean events per session (1 + geometric)."""
    session_gap_s: float = Field(40.0, gt=0.0)
    """Mean seconds between events of one session (plus one second minimum)."""
    habit_items: int = Field(5, ge=1)
    """Habitual items per user (drawn uniformly from their favourite categories)."""
    p_habit: float = Field(0.15, ge=0.0, le=1.0)
    """Chance a fresh pick is one of the user's habitual items (repeat consumption)."""
    p_funnel: float = Field(0.6, ge=0.0, le=1.0)
    """Chance a click/add_to_cart/purchase acts on the session's previous item."""
    p_next: float = Field(0.35, ge=0.0, le=1.0)
    """Chance any other in-session event moves to the previous item's successor."""
    event_mix: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 0.62,
            "click": 0.2,
            "add_to_cart": 0.08,
            "purchase": 0.04,
            "rating": 0.06,
        }
    )
    """Relative frequency of each event type."""
    shift: ShiftConfig | None = None
    """Optional distribution change; None keeps the world stationary."""

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        from rtrec.events import EVENT_TYPES

        unknown = set(self.event_mix) - set(EVENT_TYPES)
        if unknown or not self.event_mix or min(self.event_mix.values()) < 0:
            raise InvalidInput(
                f"event_mix keys must be among {EVENT_TYPES} with weights >= 0; got "
                f"{self.event_mix}",
                field="event_mix",
            )
        if self.n_items < self.n_categories:
            raise InvalidInput(
                f"n_items={self.n_items} must be >= n_categories={self.n_categories} "
                "so that every category has an item",
                field="n_items",
            )
        if self.categories_per_cluster > self.n_categories:
            raise InvalidInput(
                f"categories_per_cluster={self.categories_per_cluster} exceeds "
                f"n_categories={self.n_categories}",
                field="categories_per_cluster",
            )
        return self

    @classmethod
    def small(cls, **overrides: Any) -> SyntheticConfig:
        """~2k users, ~1k items, 100k events: tests and ``--quick`` demos (well under 1 s)."""
        base: dict[str, Any] = {"n_users": 2_000, "n_items": 1_000, "n_events": 100_000}
        return cls(**{**base, **overrides})

    @property
    def end_ts(self) -> int:
        return self.start_ts + int(self.days * DAY_MS)

    @property
    def shift_ts(self) -> int | None:
        if self.shift is None:
            return None
        if self.shift.at_ts is not None:
            return self.shift.at_ts
        return self.start_ts + int(self.shift.at_fraction * (self.end_ts - self.start_ts))


class _Regime:
    """The live items of one regime laid out by category (a ring each), with popularity."""

    def __init__(self, weights: np.ndarray, primary: np.ndarray, ring_key: np.ndarray) -> None:
        live = np.flatnonzero(weights > 0)
        self.order = live[np.lexsort((ring_key[live], primary[live]))]
        self.cat_of_pos = primary[self.order]
        self.size = np.bincount(self.cat_of_pos, minlength=int(primary.max()) + 1)
        self.start = np.concatenate([[0], np.cumsum(self.size)[:-1]])
        self.cum = np.cumsum(weights[self.order])
        cum0 = np.concatenate([[0.0], self.cum])
        self.cat_lo = cum0[self.start]
        self.cat_mass = cum0[self.start + self.size] - self.cat_lo
        self.inverse = np.full(len(weights), -1)
        self.inverse[self.order] = np.arange(len(self.order))

    def pick_in(self, cats: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Ring positions drawn by popularity within each requested (non-empty) category."""
        pos = np.searchsorted(self.cum, self.cat_lo[cats] + u * self.cat_mass[cats], "right")
        return np.clip(pos, self.start[cats], self.start[cats] + self.size[cats] - 1)

    def pick_global(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cum, u * self.cum[-1], "right"), len(self.cum) - 1)

    def advance(self, pos: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Move ``steps`` places along each position's category ring (the sequential signal)."""
        cat = self.cat_of_pos[pos]
        return self.start[cat] + (pos - self.start[cat] + steps) % self.size[cat]


def _zipf(n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf weights over n items in a random rank order."""
    return (1.0 / np.arange(1, n + 1) ** s)[rng.permutation(n)]


def _pick(rng: np.random.Generator, p: np.ndarray, size: int | tuple[int, ...]) -> np.ndarray:
    return rng.choice(len(p), size, p=p / p.sum())


@dataclass
class _Catalog:
    primary: np.ndarray
    secondary: np.ndarray
    price: np.ndarray
    created: np.ndarray
    regimes: list[_Regime]
    """Before the shift; after it (when there is one)."""
    new_cum: np.ndarray
    """Cumulative popularity of the new items (the trend)."""
    trend: list[int]


def _catalog(cfg: SyntheticConfig, rng: np.random.Generator) -> _Catalog:
    """Categories (every one non-empty), ring order, price, creation time, popularity."""
    sh, n_old, n_cat = cfg.shift, cfg.n_items, cfg.n_categories
    n_new = sh.new_items if sh else 0
    n_items = n_old + n_new
    primary = rng.integers(0, n_cat, n_items)
    primary[:n_cat] = np.arange(n_cat)
    trend = rng.choice(n_cat, min(n_cat, sh.new_item_categories), replace=False) if sh else []
    if n_new:
        primary[n_old:] = rng.choice(trend, n_new)
    other = (primary + rng.integers(1, n_cat, n_items)) % n_cat
    secondary = np.where(rng.random(n_items) < 0.3, other, -1)
    ring_key, price = rng.random(n_items), np.round(np.exp(rng.normal(3.0, 0.8, n_items)), 2)
    created = cfg.start_ts - rng.integers(0, 365 * DAY_MS, n_items)
    created[n_old:] = cfg.shift_ts or 0
    weights = np.zeros(n_items)
    weights[:n_old] = _zipf(n_old, cfg.zipf_exponent, rng)
    regimes = [_Regime(weights, primary, ring_key)]
    new_cum = np.zeros(1)
    if sh is not None:
        post = weights / weights.sum() * (1 - sh.popularity_shift)
        post[:n_old] += sh.popularity_shift * (w := _zipf(n_old, cfg.zipf_exponent, rng)) / w.sum()
        if n_new:
            new_cum = np.cumsum(_zipf(n_new, cfg.zipf_exponent, rng))
            post[n_old:] = sh.new_items_share * np.diff(new_cum, prepend=0.0) / new_cum[-1]
        regimes.append(_Regime(post, primary, ring_key))
    return _Catalog(primary, secondary, price, created, regimes, new_cum, list(trend))


def _sessions(
    cfg: SyntheticConfig, rng: np.random.Generator, signup: np.ndarray, activity: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user, ts, first-of-session, regime) per event: 1 + geometric session lengths summing
    to n_events, each session after its user's signup and wholly in one regime, so nothing
    is seen before it exists."""
    n, start, end = cfg.n_events, cfg.start_ts, cfg.end_ts
    lengths = rng.geometric(1.0 / cfg.session_mean_events, int(n / cfg.session_mean_events) + 99)
    while lengths.sum() < n:  # only for tiny n
        lengths = np.concatenate([lengths, rng.geometric(1.0 / cfg.session_mean_events, 99)])
    n_sess = int(np.searchsorted(np.cumsum(lengths), n)) + 1
    lengths = lengths[:n_sess]
    lengths[-1] -= int(lengths.sum() - n)
    sess_user = _pick(rng, activity, n_sess)
    lo = np.maximum(start, signup[sess_user])
    hi = np.maximum(lo + 1, end - 3_600_000)
    sess_start = lo + (rng.random(n_sess) * (hi - lo)).astype(np.int64)
    sess = np.repeat(np.arange(n_sess), lengths)
    first = np.zeros(n, dtype=bool)
    first[np.cumsum(lengths) - lengths] = True
    gaps = np.where(first, 0, 1000 + rng.exponential(cfg.session_gap_s * 1000, n).astype(np.int64))
    cum_gap = np.cumsum(gaps)
    ts = np.minimum(sess_start[sess] + cum_gap - cum_gap[np.flatnonzero(first)][sess], end - 1)
    shift_ts = cfg.shift_ts
    regime = np.zeros(n, np.int64) if shift_ts is None else (sess_start[sess] >= shift_ts) * 1
    return sess_user[sess], ts, first, regime


def generate(cfg: SyntheticConfig) -> Dataset:
    """Generate a :class:`Dataset` from ``cfg``, deterministically under ``cfg.seed``."""
    rng = np.random.default_rng(cfg.seed)
    start, end, shift_ts, sh = cfg.start_ts, cfg.end_ts, cfg.shift_ts, cfg.shift
    if shift_ts is not None and not start < shift_ts < end:
        raise InvalidInput(f"shift at_ts={shift_ts} is outside [{start}, {end})", field="shift")
    cat = _catalog(cfg, rng)
    n_old, n_items = cfg.n_items, len(cat.primary)
    n_new, n_cat, n_cl, n_users = n_items - n_old, cfg.n_categories, cfg.n_clusters, cfg.n_users

    # Users: taste cluster (before / after the shift), activity, signup, habitual items.
    cluster = rng.integers(0, n_cl, n_users)
    favourites = np.stack(
        [rng.choice(n_cat, cfg.categories_per_cluster, replace=False) for _ in range(n_cl)]
    )
    fav_p = 0.5 ** np.arange(cfg.categories_per_cluster)
    moved = rng.random(n_users) < (sh.taste_drift if sh else 0.0)
    drifted = np.where(moved, (cluster + rng.integers(1, max(n_cl, 2), n_users)) % n_cl, cluster)
    activity = np.exp(rng.normal(0.0, cfg.activity_sigma, n_users))
    signup = start - rng.integers(DAY_MS, 730 * DAY_MS, n_users)
    late = rng.random(n_users) < cfg.new_user_share
    signup[late] = start + rng.integers(0, max(1, int((end - start) * 0.8)), int(late.sum()))
    habit_cat = favourites[cluster[:, None], _pick(rng, fav_p, (n_users, cfg.habit_items))]
    r0 = cat.regimes[0]
    habit_pos = r0.start[habit_cat] + (rng.random(habit_cat.shape) * r0.size[habit_cat])
    habits = r0.order[habit_pos.astype(np.int64)]
    user, ts, first, regime = _sessions(cfg, rng, signup, activity)
    n = cfg.n_events

    # Events: type, then item. In-session events repeat (funnel) or follow the previous
    # item; the rest are fresh picks from habit, the trend, taste or global popularity.
    types = np.array(list(cfg.event_mix), dtype=object)
    etype = types[_pick(rng, np.array(list(cfg.event_mix.values())), n)]
    funnel = np.isin(etype, ("click", "add_to_cart", "purchase"))
    repeat = ~first & funnel & (rng.random(n) < cfg.p_funnel)
    follow = ~first & ~repeat & (rng.random(n) < cfg.p_next)
    fresh = ~(repeat | follow)
    anchor = np.maximum.accumulate(np.where(fresh, np.arange(n), 0))
    steps = np.cumsum(follow)
    offset = steps - steps[anchor]
    ev_cluster = np.where(regime == 1, drifted[user], cluster[user])
    fav_cat = favourites[ev_cluster, _pick(rng, fav_p, n)]
    taste, u = rng.random(n) < cfg.taste_strength, rng.random(n)
    habit = rng.random(n) < cfg.p_habit
    hot = rng.random(n) < (sh.new_items_share if n_new else 0.0)
    habit_item = habits[user, rng.integers(0, cfg.habit_items, n)]
    item = np.empty(n, dtype=np.int64)
    for k, reg in enumerate(cat.regimes):
        a = np.flatnonzero((regime == k) & fresh)
        pos = np.where(taste[a], reg.pick_in(fav_cat[a], u[a]), reg.pick_global(u[a]))
        pos = np.where(habit[a], reg.inverse[habit_item[a]], pos)
        if k == 1 and n_new:
            new = np.searchsorted(cat.new_cum, u[a] * cat.new_cum[-1], "right")
            new = n_old + np.minimum(new, n_new - 1)
            pos = np.where(hot[a] & ~habit[a], reg.inverse[new], pos)
        anchor_pos = np.zeros(n, dtype=np.int64)
        anchor_pos[a] = pos
        rows = np.flatnonzero(regime == k)
        item[rows] = reg.order[reg.advance(anchor_pos[anchor[rows]], offset[rows])]

    fav_mask = np.zeros((n_cl, n_cat), dtype=bool)
    fav_mask[np.arange(n_cl)[:, None], favourites] = True
    stars = np.rint(2.6 + 1.4 * fav_mask[ev_cluster, cat.primary[item]] + rng.normal(0, 0.9, n))
    value = np.where(etype == "rating", np.clip(stars, 1, 5), np.nan)
    value = np.where(etype == "purchase", cat.price[item], value)

    names = [_CATEGORY_NAMES[c] if c < len(_CATEGORY_NAMES) else f"cat_{c}" for c in range(n_cat)]
    user_ids = np.array([f"u{i}" for i in range(n_users)], dtype=object)
    item_ids = np.array([f"i{i}" for i in range(n_items)], dtype=object)
    order = np.argsort(ts, kind="stable")
    events = pd.DataFrame(
        {
            "user_id": user_ids[user[order]],
            "item_id": item_ids[item[order]],
            "event_type": etype[order],
            "ts": ts[order],
            "value": value[order],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": [f"{names[p].title()} item {i}" for i, p in enumerate(cat.primary)],
            "categories": [
                [names[p]] if s < 0 else [names[p], names[s]]
                for p, s in zip(cat.primary, cat.secondary, strict=True)
            ],
            "created_ts": cat.created,
        }
    )
    meta = {
        "source": "synthetic",
        "config": cfg.model_dump(),
        "shift_ts": shift_ts,
        "trend_categories": [names[c] for c in cat.trend],
        "favourite_categories": [[names[c] for c in fav] for fav in favourites],
    }
    logger.info("generated %d events, %d users, %d items", n, n_users, n_items)
    return Dataset(_users(cfg, rng, user_ids, cluster, signup), items, events, meta)


def _users(
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    user_ids: np.ndarray,
    cluster: np.ndarray,
    signup: np.ndarray,
) -> pd.DataFrame:
    """Demographics loosely tied to the taste cluster, so profile features carry signal."""
    n = cfg.n_users
    age = np.rint(rng.normal(rng.uniform(20, 55, cfg.n_clusters)[cluster], 8.0))
    age_col = pd.array(np.clip(age, 13, 90).astype(np.int64), dtype="Int64")
    age_col[rng.random(n) < 0.05] = pd.NA
    g = rng.random(n)
    gender = np.where(g < 0.48, "M", np.where(g < 0.96, "F", None)).astype(object)
    occ_cum = np.cumsum(rng.dirichlet(np.full(len(_OCCUPATIONS), 0.7), cfg.n_clusters), axis=1)
    occ = np.minimum((rng.random(n)[:, None] > occ_cum[cluster]).sum(axis=1), len(_OCCUPATIONS) - 1)
    return pd.DataFrame(
        {
            "user_id": user_ids,
            "age": age_col,
            "gender": gender,
            "occupation": np.array(_OCCUPATIONS, dtype=object)[occ],
            "signup_ts": signup,
        }
    )
