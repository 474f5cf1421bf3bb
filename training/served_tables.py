"""The fitted candidate sources and the ranker's item features as flat numpy tables: what
the served two-stage system (``rtrec.training.served_rank``) answers a request from.

Built once at training time from the fitted :class:`~rtrec.training.rank_features.
CandidateGenerator`, over the served model's catalog (the two-tower's item vocabulary,
sorted ids: an item's position there is its row in the model's tables and its rank in
id order, which is how training breaks ties). A request then costs array look-ups only:

- item-item: each item's neighbour positions and EASE weights, ``[items, neighbours]``;
- category trending: each category's scored positions (concatenated, with offsets) and
  the trend score of every item, and each item's categories in the order training reads;
- popularity: the catalog in popularity order (score descending, then position) with the
  scores;
- the ranker's item features (``rank_features.item_table``) as one ``[items, 5]`` matrix,
  frozen at the generator's fit time as training's offline scoring freezes them.

An item of the generator's catalog the model does not know cannot be served (the bundle's
ids come from the model) and is dropped with a WARNING; training fits both on the same
events, so none is expected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from rtrec.training.candidates import CategoryTrendingSource, PopularSource, top_positions
from rtrec.training.learned_sources import ItemItemSource
from rtrec.training.rank_features import CandidateGenerator
from rtrec.training.vocab import Vocab

logger = logging.getLogger(__name__)

ITEM_FEATURES = ("pop_all", "pop_7d", "pop_30d", "item_users", "item_age_days")
"""The item table's columns (``rank_features.item_table``), in the matrix's order."""


@dataclass
class ServedTables:
    """Every per-item array the served sources and features read (see module doc)."""

    in_catalog: np.ndarray
    """bool ``[n]``: the item is in the generator's catalog (features NaN otherwise)."""
    ii_nbr: np.ndarray
    """int32 ``[n, K]``: each item's neighbour positions (rows outside the catalog: 0)."""
    ii_w: np.ndarray
    """float32 ``[n, K]``: their EASE weights."""
    trend: np.ndarray
    """float64 ``[n]``: the category source's normalised trend score."""
    cat_ptr: np.ndarray
    """int64 ``[categories + 1]``: offsets of each category's scored positions."""
    cat_pos: np.ndarray
    """int32: the positions each category's trending list scores, concatenated."""
    item_cat_ptr: np.ndarray
    """int64 ``[n + 1]``: offsets of each item's categories."""
    item_cats: np.ndarray
    """int32: each item's category indices, in the order training lists them."""
    pop_order: np.ndarray
    """int32: catalog positions, most popular first (ties: lower position)."""
    pop_score: np.ndarray
    """float64 ``[n]``: the popularity source's scores."""
    item_features: np.ndarray
    """float64 ``[n, len(ITEM_FEATURES)]``: the ranker's item features (NaN outside)."""

    @property
    def size(self) -> int:
        return len(self.in_catalog)

    def categories_of(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(category indices, owner index into ``positions``) of every category of every
        position, in order: each position's categories as training lists them."""
        start, end = self.item_cat_ptr[positions], self.item_cat_ptr[positions + 1]
        lengths = end - start
        owner = np.repeat(np.arange(len(positions)), lengths)
        offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return self.item_cats[np.repeat(start, lengths) + offsets], owner

    def save(self, path: Path) -> None:
        """One uncompressed ``.npz`` (loads in milliseconds; no pickled objects)."""
        np.savez(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> ServedTables:
        with np.load(path, allow_pickle=False) as data:
            tables = cls(**{f.name: data[f.name] for f in fields(cls)})
        tables.check()
        return tables

    def check(self) -> None:
        """Shapes that agree with each other, or ValueError naming the first that does not."""
        n = self.size
        sized = {"ii_nbr": len(self.ii_nbr), "ii_w": len(self.ii_w), "trend": len(self.trend)}
        sized |= {"pop_score": len(self.pop_score), "item_features": len(self.item_features)}
        sized |= {"item_cat_ptr": len(self.item_cat_ptr) - 1}
        for name, got in sized.items():
            if got != n:
                raise ValueError(f"ranker table {name} has {got} rows for {n} items")
        if self.ii_nbr.shape != self.ii_w.shape:
            raise ValueError(f"ii_nbr {self.ii_nbr.shape} and ii_w {self.ii_w.shape} differ")
        if self.item_features.shape[1] != len(ITEM_FEATURES):
            raise ValueError(f"item_features has {self.item_features.shape[1]} columns")
        for name in ("ii_nbr", "cat_pos", "pop_order"):
            values = getattr(self, name)
            if len(values) and (values.min() < 0 or values.max() >= n):
                raise ValueError(f"ranker table {name} points outside the {n}-item catalog")


def _source(gen: CandidateGenerator, kind: type) -> Any:
    found = [s for s in gen.sources if isinstance(s, kind)]
    if len(found) != 1:
        raise ValueError(f"the served generator needs exactly one {kind.__name__}")
    return found[0]


def tables_from(gen: CandidateGenerator, model_ids: list[str]) -> ServedTables:
    """The tables of a fitted generator over the model's catalog ``model_ids`` (sorted)."""
    ii = _source(gen, ItemItemSource)
    cat = _source(gen, CategoryTrendingSource)
    pop = _source(gen, PopularSource)
    served = Vocab(model_ids)
    gen_ids = ii._cat.ids
    to_served = served.encode(gen_ids) - 1  # generator position -> served position (-1)
    lost = int((to_served < 0).sum())
    if lost:
        logger.warning("ranker tables: %d generator items unknown to the model, dropped", lost)
    n, ok = len(model_ids), to_served >= 0
    in_catalog = np.zeros(n, dtype=bool)
    in_catalog[to_served[ok]] = True
    nbr = np.zeros((n, ii._nbr.shape[1]), dtype=np.int32)
    w = np.zeros((n, ii._nbr.shape[1]), dtype=np.float32)
    mapped = to_served[ii._nbr]
    # A neighbour the model does not know gets weight 0 at position 0: it adds nothing.
    nbr[to_served[ok]] = np.where(mapped >= 0, mapped, 0)[ok]
    w[to_served[ok]] = np.where(mapped >= 0, ii._w, 0.0)[ok]
    trend = _spread(cat._pop, to_served, n)
    cat_names = sorted(cat._by_cat)
    lists = [to_served[cat._by_cat[c]] for c in cat_names]
    lists = [p[p >= 0].astype(np.int32) for p in lists]
    pop_score = _spread(pop._scores, to_served, n)
    known = np.flatnonzero(in_catalog)
    pop_order = top_positions(pop_score[known], known, len(known)).astype(np.int32)
    return ServedTables(
        in_catalog=in_catalog,
        ii_nbr=nbr,
        ii_w=w,
        trend=trend,
        cat_ptr=np.cumsum([0, *map(len, lists)]).astype(np.int64),
        cat_pos=np.concatenate(lists) if lists else np.zeros(0, np.int32),
        **_item_categories(gen.item_categories, model_ids, cat_names),
        pop_order=pop_order,
        pop_score=pop_score,
        item_features=_item_features(gen, model_ids),
    )


def _spread(values: np.ndarray, to_served: np.ndarray, n: int) -> np.ndarray:
    """Per generator position ``values`` -> per served position (NaN where unknown)."""
    out = np.full(n, np.nan)
    ok = to_served >= 0
    out[to_served[ok]] = values[ok]
    return out


def _item_categories(
    by_item: dict[str, list[str]], model_ids: list[str], names: list[str]
) -> dict[str, np.ndarray]:
    """Each served item's categories as CSR arrays (``item_cat_ptr``, ``item_cats``)."""
    index = {c: j for j, c in enumerate(names)}
    extra = sorted({c for cs in by_item.values() for c in cs} - set(index))
    index |= {c: len(names) + j for j, c in enumerate(extra)}  # categories with no list
    rows = [[index[c] for c in by_item.get(i, [])] for i in model_ids]
    ptr = np.cumsum([0, *map(len, rows)]).astype(np.int64)
    cats = np.fromiter((c for r in rows for c in r), dtype=np.int32, count=int(ptr[-1]))
    return {"item_cat_ptr": ptr, "item_cats": cats}


def _item_features(gen: CandidateGenerator, model_ids: list[str]) -> np.ndarray:
    table = gen.items.reindex(model_ids)[list(ITEM_FEATURES)]
    return np.ascontiguousarray(table.to_numpy(dtype=np.float64))
