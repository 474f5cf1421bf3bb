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

import numpy as np
import pandas as pd

from rtrec.data.dataset import Dataset
from rtrec.data.synthetic_config import DAY_MS, ShiftConfig, SyntheticConfig
from rtrec.data.synthetic_world import Catalog, build_catalog, draw_sessions, pick
from rtrec.errors import InvalidInput

__all__ = ["ShiftConfig", "SyntheticConfig", "generate"]

logger = logging.getLogger(__name__)

_CATEGORY_NAMES = (
    "electronics", "books", "fashion", "home", "sports", "toys", "beauty", "grocery",
    "garden", "music", "movies", "games", "health", "auto", "pets", "office", "baby",
    "jewelry", "outdoor", "tools", "travel", "art", "food", "crafts",
)  # fmt: skip
_OCCUPATIONS = (
    "student", "engineer", "teacher", "artist", "healthcare", "sales", "retired",
    "manager", "writer", "technician", "other",
)  # fmt: skip


def generate(cfg: SyntheticConfig) -> Dataset:
    """Generate a :class:`Dataset` from ``cfg``, deterministically under ``cfg.seed``.

    The steps below draw from one generator in a fixed order; reordering them (or a draw
    inside them) changes every frame a seed gives, so each step keeps its draws in place.
    """
    rng = np.random.default_rng(cfg.seed)
    start, end, shift_ts = cfg.start_ts, cfg.end_ts, cfg.shift_ts
    if shift_ts is not None and not start < shift_ts < end:
        raise InvalidInput(f"shift at_ts={shift_ts} is outside [{start}, {end})", field="shift")
    cat = build_catalog(cfg, rng)
    pop = _population(cfg, rng, cat)
    user, ts, first, regime = draw_sessions(cfg, rng, pop.signup, pop.activity)
    etype, walk = _event_types(cfg, rng, first)
    ev_cluster = np.where(regime == 1, pop.drifted[user], pop.cluster[user])
    item = _items(cfg, rng, cat, pop, _Events(user, regime, ev_cluster, walk))
    value = _values(cfg, rng, cat, pop.favourites, (etype, item, ev_cluster))
    return _dataset(cfg, rng, cat, pop, (user, item, etype, ts, value))


@dataclass
class _Population:
    """Users: taste cluster (before / after the shift), activity, signup, habitual items."""

    cluster: np.ndarray
    drifted: np.ndarray
    favourites: np.ndarray
    """Favourite categories per cluster, most favoured first."""
    fav_p: np.ndarray
    """How often each favourite rank is picked (halving down the list)."""
    activity: np.ndarray
    signup: np.ndarray
    habits: np.ndarray
    """Habitual items per user (item indices)."""


def _population(cfg: SyntheticConfig, rng: np.random.Generator, cat: Catalog) -> _Population:
    """Clusters, their favourite categories, who drifts, activity, signup, habits."""
    sh, start, end = cfg.shift, cfg.start_ts, cfg.end_ts
    n_cat, n_cl, n_users = cfg.n_categories, cfg.n_clusters, cfg.n_users
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
    habit_cat = favourites[cluster[:, None], pick(rng, fav_p, (n_users, cfg.habit_items))]
    r0 = cat.regimes[0]
    habit_pos = r0.start[habit_cat] + (rng.random(habit_cat.shape) * r0.size[habit_cat])
    habits = r0.order[habit_pos.astype(np.int64)]
    return _Population(cluster, drifted, favourites, fav_p, activity, signup, habits)


@dataclass
class _Walk:
    """Where each event's item comes from: a fresh pick, or steps along from one."""

    fresh: np.ndarray
    """Events that pick an item afresh (the rest repeat or follow the previous one)."""
    anchor: np.ndarray
    """Index of the fresh event each event's item is walked from."""
    offset: np.ndarray
    """Ring steps from the anchor's item (follows since the anchor)."""


def _event_types(
    cfg: SyntheticConfig, rng: np.random.Generator, first: np.ndarray
) -> tuple[np.ndarray, _Walk]:
    """Each event's type, and whether it repeats (funnel) or follows the previous item."""
    n = cfg.n_events
    types = np.array(list(cfg.event_mix), dtype=object)
    etype = types[pick(rng, np.array(list(cfg.event_mix.values())), n)]
    funnel = np.isin(etype, ("click", "add_to_cart", "purchase"))
    repeat = ~first & funnel & (rng.random(n) < cfg.p_funnel)
    follow = ~first & ~repeat & (rng.random(n) < cfg.p_next)
    fresh = ~(repeat | follow)
    anchor = np.maximum.accumulate(np.where(fresh, np.arange(n), 0))
    steps = np.cumsum(follow)
    return etype, _Walk(fresh, anchor, steps - steps[anchor])


@dataclass
class _Events:
    """Per-event columns the item picks need."""

    user: np.ndarray
    regime: np.ndarray
    cluster: np.ndarray
    """The user's taste cluster in the event's regime."""
    walk: _Walk


def _items(
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    cat: Catalog,
    pop: _Population,
    ev: _Events,
) -> np.ndarray:
    """Each event's item. Fresh picks come from habit, the trend, taste or global
    popularity (in that precedence); the other events walk from their anchor's item."""
    n, n_old, n_new = cfg.n_events, cfg.n_items, len(cat.primary) - cfg.n_items
    fav_cat = pop.favourites[ev.cluster, pick(rng, pop.fav_p, n)]
    taste, u = rng.random(n) < cfg.taste_strength, rng.random(n)
    habit = rng.random(n) < cfg.p_habit
    hot = rng.random(n) < (cfg.shift.new_items_share if cfg.shift and n_new else 0.0)
    habit_item = pop.habits[ev.user, rng.integers(0, cfg.habit_items, n)]
    item = np.empty(n, dtype=np.int64)
    for k, reg in enumerate(cat.regimes):
        a = np.flatnonzero((ev.regime == k) & ev.walk.fresh)
        pos = np.where(taste[a], reg.pick_in(fav_cat[a], u[a]), reg.pick_global(u[a]))
        pos = np.where(habit[a], reg.inverse[habit_item[a]], pos)
        if k == 1 and n_new:
            new = np.searchsorted(cat.new_cum, u[a] * cat.new_cum[-1], "right")
            new = n_old + np.minimum(new, n_new - 1)
            pos = np.where(hot[a] & ~habit[a], reg.inverse[new], pos)
        anchor_pos = np.zeros(n, dtype=np.int64)
        anchor_pos[a] = pos
        rows = np.flatnonzero(ev.regime == k)
        walked = reg.advance(anchor_pos[ev.walk.anchor[rows]], ev.walk.offset[rows])
        item[rows] = reg.order[walked]
    return item


def _values(
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    cat: Catalog,
    favourites: np.ndarray,
    columns: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """Ratings (higher in the user's favourite categories) and purchase prices; NaN else."""
    etype, item, ev_cluster = columns
    n_cl = cfg.n_clusters
    fav_mask = np.zeros((n_cl, cfg.n_categories), dtype=bool)
    fav_mask[np.arange(n_cl)[:, None], favourites] = True
    noise = rng.normal(0, 0.9, cfg.n_events)
    stars = np.rint(2.6 + 1.4 * fav_mask[ev_cluster, cat.primary[item]] + noise)
    value = np.where(etype == "rating", np.clip(stars, 1, 5), np.nan)
    return np.where(etype == "purchase", cat.price[item], value)


def _dataset(
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    cat: Catalog,
    pop: _Population,
    columns: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> Dataset:
    """The frames: events in time order, the catalog with names, the users' profiles."""
    user, item, etype, ts, value = columns
    n_cat, n_users, n_items = cfg.n_categories, cfg.n_users, len(cat.primary)
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
        "shift_ts": cfg.shift_ts,
        "trend_categories": [names[c] for c in cat.trend],
        "favourite_categories": [[names[c] for c in fav] for fav in pop.favourites],
    }
    logger.info("generated %d events, %d users, %d items", len(events), n_users, n_items)
    users = _users(cfg, rng, user_ids, pop.cluster, pop.signup)
    return Dataset(users, items, events, meta)


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
