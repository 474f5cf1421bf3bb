"""The category features of served candidates (``ServedRanker``), in numpy over the
served tables: each computes what its ``rank_features`` twin computes in pandas for a
training row, value for value (``tests/unit/training/test_served_rank.py``)."""

from __future__ import annotations

import numpy as np
from rtrec.training.served_tables import ServedTables

PAD_MAX_CATEGORIES = 8
"""Up to this many categories per item, each item's are kept in one padded row."""


def padded_categories(tables: ServedTables, n_cats: int) -> np.ndarray | None:
    """``[items, most categories of an item]`` category indices, ``n_cats`` as padding."""
    lengths = np.diff(tables.item_cat_ptr)
    width = int(lengths.max()) if len(lengths) else 0
    if width > PAD_MAX_CATEGORIES:
        return None
    out = np.full((len(lengths), max(width, 1)), n_cats, dtype=np.int32)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    slot = np.arange(len(tables.item_cats)) - np.repeat(tables.item_cat_ptr[:-1], lengths)
    out[owner, slot] = tables.item_cats
    return out


class ServedCategories:
    """Per-request category features over one bundle's tables."""

    def __init__(self, tables: ServedTables) -> None:
        self.tables = tables
        cats = tables.item_cats
        self.n_cats = int(cats.max()) + 1 if len(cats) else 0
        self.pad = padded_categories(tables, self.n_cats)

    def match(self, pos: np.ndarray, known: np.ndarray, n_items: int) -> np.ndarray:
        """``rank_features.category_match``: the share of the user's items in each
        candidate's categories (summed over its categories in their order)."""
        pad = self.pad
        if pad is None:  # items with many categories: the offsets' arrays
            t = self.tables
            mine, _ = t.categories_of(known)
            shares = np.bincount(mine, minlength=self.n_cats) / max(n_items, 1)
            cats, owner = t.categories_of(pos)
            return np.bincount(owner, weights=shares[cats], minlength=len(pos))
        # Every item's categories in a row, padded with an extra category of share 0: the
        # row sums add in the same order (0 + first + second ...; + 0 changes nothing).
        counts = np.bincount(pad[known].ravel(), minlength=self.n_cats + 1)
        shares = counts / max(n_items, 1)
        shares[-1] = 0.0
        return shares[pad[pos]].sum(axis=1)

    def recency(self, pos: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """``rank_features.category_recency``: per candidate, the position in the history
        (newest first) of the latest item in any of its categories; NaN where none."""
        t = self.tables
        at = np.flatnonzero(hist >= 0)
        latest = np.full(self.n_cats + 1, np.inf)  # the extra slot: the padding category
        mine, owner = t.categories_of(hist[at])
        np.minimum.at(latest, mine, at[owner].astype(np.float64))
        latest[-1] = np.inf
        if self.pad is not None:
            out = latest[self.pad[pos]].min(axis=1)
        else:
            cats, owner = t.categories_of(pos)
            out = np.full(len(pos), np.inf)
            np.minimum.at(out, owner, latest[cats])
        out[np.isinf(out)] = np.nan
        return out
