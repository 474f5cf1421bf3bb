"""What a synthetic user truly likes, and how likely they click a shown item.

The generator (:mod:`rtrec.data.synthetic`) draws every fresh pick of a user from a known
distribution: one of the user's habitual items, else (after the shift) a new trending
item, else with ``taste_strength`` an item of one of the cluster's favourite categories by
popularity within it, else an item by global popularity. :func:`ground_truth` rebuilds the
generator's catalog and population from the same config and seed (they are its first
draws, so they come out identical) and gives that distribution per user: the **taste**
``p(user, item)``, which sums to one over the items of the regime.

A simulated user (``rtrec.serving.simulator``) then clicks with a position-based click
model: an item shown at position ``k`` (1 = top) is examined with probability
``1 / k ** position_decay`` and, once examined, attracts a click with probability
``1 - exp(-attraction_scale * n_items * p(user, item))``: ``n_items * p`` is how many
times likelier than a uniform pick the user would choose the item on their own, so an
item of a favourite category attracts far more often than one outside them, and a model
that ranks what users truly like higher gets more clicks. Both knobs are arguments, not
facts of the data: they shape how strongly clicks follow taste, and every figure measured
with the simulator names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rtrec.data.synthetic import _population
from rtrec.data.synthetic_config import SyntheticConfig
from rtrec.data.synthetic_world import Catalog, Regime, build_catalog
from rtrec.errors import InvalidInput


@dataclass(frozen=True)
class GroundTruth:
    """Per-user taste over the catalog of one regime, and the click model on top of it."""

    item_index: dict[str, int]
    """Item id (``i<n>``) -> column of :attr:`base`."""
    base: np.ndarray
    """(clusters, items): the fresh-pick distribution of a cluster without habits."""
    cluster: np.ndarray
    """Each user's taste cluster in this regime (users ``u0``..``uN``)."""
    habits: np.ndarray
    """(users, habit_items): each user's habitual items (item indices)."""
    p_habit: float

    def taste(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        """``p(user, item)`` for each item: the chance the user's own next pick is it.
        Items the generator never made (another catalog) have taste 0."""
        user = _user_index(user_id, len(self.cluster))
        cols = np.array([self.item_index.get(i, -1) for i in item_ids], dtype=np.int64)
        row = (1.0 - self.p_habit) * self.base[self.cluster[user]]
        p = np.where(cols >= 0, row[np.maximum(cols, 0)], 0.0)
        habitual = self.habits[user]
        share = self.p_habit / len(habitual)
        return p + share * (cols[:, None] == habitual[None, :]).sum(axis=1) * (cols >= 0)

    def click_probability(
        self,
        user_id: str,
        item_ids: Sequence[str],
        *,
        attraction_scale: float = 0.05,
        position_decay: float = 1.0,
    ) -> np.ndarray:
        """P(click) for each item shown in this order (position 1 first); see the module
        docstring for the model and its two knobs."""
        if attraction_scale <= 0 or position_decay < 0:
            raise InvalidInput(
                f"attraction_scale must be > 0 and position_decay >= 0, got "
                f"{attraction_scale} and {position_decay}",
                field="attraction_scale",
            )
        lift = len(self.item_index) * self.taste(user_id, item_ids)
        attraction = 1.0 - np.exp(-attraction_scale * lift)
        examined = 1.0 / np.arange(1, len(item_ids) + 1, dtype=float) ** position_decay
        return examined * attraction


def ground_truth(cfg: SyntheticConfig, *, after_shift: bool = False) -> GroundTruth:
    """The taste of every user of the data set ``generate(cfg)`` makes, in the regime
    before the shift (default) or after it (``after_shift``: new popularity, the new items'
    trend, the users whose taste drifted)."""
    if after_shift and cfg.shift is None:
        raise InvalidInput("after_shift needs a config with a shift", field="after_shift")
    rng = np.random.default_rng(cfg.seed)
    cat = build_catalog(cfg, rng)
    pop = _population(cfg, rng, cat)
    k = 1 if after_shift else 0
    cluster = pop.drifted if after_shift else pop.cluster
    base = _cluster_picks(cfg, cat, cat.regimes[k], pop.favourites, pop.fav_p)
    if after_shift and (n_new := len(cat.primary) - cfg.n_items):
        hot = cfg.shift.new_items_share if cfg.shift else 0.0
        new = np.zeros(len(cat.primary))
        new[cfg.n_items :] = np.diff(cat.new_cum, prepend=0.0)[:n_new] / cat.new_cum[-1]
        base = (1.0 - hot) * base + hot * new[None, :]
    ids = {f"i{i}": i for i in range(len(cat.primary))}
    return GroundTruth(ids, base, cluster, pop.habits, cfg.p_habit)


def _cluster_picks(
    cfg: SyntheticConfig,
    cat: Catalog,
    regime: Regime,
    favourites: np.ndarray,
    fav_p: np.ndarray,
) -> np.ndarray:
    """(clusters, items): taste_strength on the favourite categories (each by the halving
    weights, then by popularity within it), the rest on global popularity."""
    weights = np.zeros(len(cat.primary))
    weights[regime.order] = np.diff(regime.cum, prepend=0.0)
    glob = weights / weights.sum()
    per_cat = np.bincount(cat.primary, weights=weights, minlength=cfg.n_categories)
    within = np.divide(weights, per_cat[cat.primary], out=np.zeros_like(weights), where=weights > 0)
    fav_w = fav_p / fav_p.sum()
    out = np.empty((len(favourites), len(weights)))
    for c, favs in enumerate(favourites):
        cat_w = np.zeros(cfg.n_categories)
        np.add.at(cat_w, favs, fav_w)
        out[c] = cfg.taste_strength * cat_w[cat.primary] * within + (1 - cfg.taste_strength) * glob
    return out


def _user_index(user_id: str, n_users: int) -> int:
    """``u<n>`` -> n; other ids were not generated and have no ground truth."""
    if user_id.startswith("u") and user_id[1:].isdigit() and int(user_id[1:]) < n_users:
        return int(user_id[1:])
    raise InvalidInput(f"user {user_id!r} is not one of the generated u0..u{n_users - 1}")
