"""The synthetic world's fixed parts: the catalog with its popularity regimes, and when
each session happens.

Split from :mod:`rtrec.data.synthetic` (which draws users, events and items on top of
these) to keep each module readable; the functions take the generator's one random
stream and must be called in the generator's order for a seed to give the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtrec.data.synthetic_config import DAY_MS, SyntheticConfig


class Regime:
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


def zipf(n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf weights over n items in a random rank order."""
    return (1.0 / np.arange(1, n + 1) ** s)[rng.permutation(n)]


def pick(rng: np.random.Generator, p: np.ndarray, size: int | tuple[int, ...]) -> np.ndarray:
    """Indices drawn with probability proportional to the weights ``p``."""
    return rng.choice(len(p), size, p=p / p.sum())


@dataclass
class Catalog:
    """The items: categories, price, creation time, and popularity per regime."""

    primary: np.ndarray
    secondary: np.ndarray
    price: np.ndarray
    created: np.ndarray
    regimes: list[Regime]
    """Before the shift; after it (when there is one)."""
    new_cum: np.ndarray
    """Cumulative popularity of the new items (the trend)."""
    trend: list[int]


def build_catalog(cfg: SyntheticConfig, rng: np.random.Generator) -> Catalog:
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
    weights[:n_old] = zipf(n_old, cfg.zipf_exponent, rng)
    regimes = [Regime(weights, primary, ring_key)]
    new_cum = np.zeros(1)
    if sh is not None:
        post = weights / weights.sum() * (1 - sh.popularity_shift)
        post[:n_old] += sh.popularity_shift * (w := zipf(n_old, cfg.zipf_exponent, rng)) / w.sum()
        if n_new:
            new_cum = np.cumsum(zipf(n_new, cfg.zipf_exponent, rng))
            post[n_old:] = sh.new_items_share * np.diff(new_cum, prepend=0.0) / new_cum[-1]
        regimes.append(Regime(post, primary, ring_key))
    return Catalog(primary, secondary, price, created, regimes, new_cum, list(trend))


def draw_sessions(
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
    sess_user = pick(rng, activity, n_sess)
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
