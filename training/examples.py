"""Training-set frames -> tensors, and the user state a model sees at evaluation/serving.

A frame row is one example: ``user_id``, ``item_id``, ``ts`` and the features as of ``ts``
(``hist_item_ids`` newest first, ``cnt_<type>_<window>`` counts, ``secs_since_prev``,
``item_categories``) as written by :mod:`rtrec.training.dataset`. The same transforms turn the
online features into the user tower's input at serving time (:func:`dense_vector`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from rtrec.training.vocab import Vocab

SECS_CAP = 30 * 86_400.0
"""Seconds since the previous event are capped at 30 days (and a first event counts as that)."""


def dense_names(frame: pd.DataFrame) -> list[str]:
    """The dense feature columns a frame carries, in a stable order."""
    names = sorted(c for c in frame.columns if c.startswith("cnt_"))
    if "secs_since_prev" in frame.columns:
        names.append("secs_since_prev")
    return names


def dense_matrix(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    """A training frame's dense columns through :func:`dense_transform` (missing columns
    and nulls count as missing)."""
    raw = np.full((len(frame), len(names)), np.nan)
    for j, name in enumerate(names):
        if name in frame.columns:
            raw[:, j] = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype="float64")
    return dense_transform(raw, names)


def dense_transform(raw: np.ndarray, names: list[str]) -> np.ndarray:
    """Raw dense features (rows x ``names``, float64, NaN = missing) -> the user tower's
    input: log1p of counts clipped at 0 (missing: 0) and of ``secs_since_prev`` clipped
    to ``[0, SECS_CAP]`` (missing: ``SECS_CAP``, as for a first event).

    The one transform of these features: training calls it through :func:`dense_matrix`
    and serving on each request's online features, so the two cannot drift apart.
    """
    secs = np.array([name == "secs_since_prev" for name in names], dtype=bool)
    values = np.atleast_2d(np.asarray(raw, dtype=np.float64))
    values = np.where(np.isnan(values), np.where(secs, SECS_CAP, 0.0), values)
    values = np.clip(np.nan_to_num(values), 0.0, np.where(secs, SECS_CAP, np.inf))
    return np.log1p(values).astype(np.float32)


def dense_vector(features: dict[str, float | None], names: list[str]) -> np.ndarray:
    """One user's online features (by name) -> the dense row the model expects."""
    return dense_matrix(pd.DataFrame([{n: features.get(n) for n in names}]), names)[0]


@dataclass
class InputEncoder:
    """Turns ids and features into the towers' input arrays: the user, item and category
    vocabularies, each item's categories, the dense feature names and the history length
    the model was fitted with (saved with it, ``rtrec.training.artifacts``)."""

    users: Vocab
    items: Vocab
    categories: Vocab
    dense: list[str]
    history_len: int
    item_categories: np.ndarray
    """``[items.size, max_item_categories]`` category indices per item index (0 = none)."""

    @classmethod
    def fit(
        cls,
        train: pd.DataFrame,
        *,
        history_len: int = 20,
        max_item_categories: int = 4,
        items: pd.DataFrame | None = None,
        dense: bool = True,
    ) -> InputEncoder:
        """``dense=False`` leaves the stream features out (the user tower gets none)."""
        users = Vocab.build(train["user_id"].astype(str))
        item_vocab = Vocab.build(train["item_id"].astype(str))
        cats_by_item = _categories_by_item(train, items)
        categories = Vocab.build(c for cs in cats_by_item.values() for c in cs)
        table = np.zeros((item_vocab.size, max_item_categories), dtype=np.int64)
        for item, cats in cats_by_item.items():
            i = item_vocab.index(item)
            if i:
                row = categories.encode(cats[:max_item_categories])
                table[i, : len(row)] = row
        names = dense_names(train) if dense else []
        return cls(users, item_vocab, categories, names, history_len, table)

    def encode(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Model inputs of every row of a training-set frame."""
        items = self.items.encode(frame["item_id"].astype(str))
        return {
            "user": self.users.encode(frame["user_id"].astype(str)),
            "history": self.items.encode_lists(_lists(frame["hist_item_ids"]), self.history_len),
            "dense": dense_matrix(frame, self.dense),
            "item": items,
        }

    def user_state(
        self, seen: pd.DataFrame, user_ids: list[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, history, dense) inputs as of each user's latest ``seen`` row.

        History is the user's most recent seen items, newest first (what the online store
        holds); dense features are those of the latest row. Vectorised (no per-user Python):
        the evaluator calls this once per chunk of users over the whole ``seen`` frame.
        """
        uniq, inverse = np.unique(np.asarray([str(u) for u in user_ids]), return_inverse=True)
        if not len(uniq):
            empty = np.zeros((0, self.history_len), dtype=np.int64)
            return self.users.encode([]), empty, np.zeros((0, len(self.dense)), np.float32)
        users = seen["user_id"].astype(str)
        mine = seen[users.isin(set(uniq)).to_numpy()].assign(user_id=users)
        ordered = mine.sort_values(["user_id", "ts"], ascending=[True, False], kind="stable")
        rank = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
        row = np.searchsorted(uniq, ordered["user_id"].to_numpy())
        keep = rank < self.history_len
        history = np.zeros((len(uniq), self.history_len), dtype=np.int64)
        history[row[keep], rank[keep]] = self.items.encode(ordered["item_id"].astype(str)[keep])
        latest = ordered[rank == 0].set_index("user_id").reindex(uniq)
        dense = dense_matrix(latest.reset_index(), self.dense)
        return self.users.encode(user_ids), history[inverse], dense[inverse]


def _lists(column: pd.Series) -> list[list[str]]:
    return [[str(v) for v in x] if x is not None and len(x) else [] for x in column]


def _categories_by_item(train: pd.DataFrame, items: pd.DataFrame | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if "item_categories" in train.columns:
        firsts = train.drop_duplicates("item_id")
        for item, cats in zip(
            firsts["item_id"].astype(str), firsts["item_categories"], strict=True
        ):
            out[item] = [str(c) for c in cats] if cats is not None else []
    if items is not None:
        for item, cats in zip(items["item_id"].astype(str), items["categories"], strict=True):
            out.setdefault(item, [str(c) for c in cats] if cats is not None else [])
    return out


def histories_within(frame: pd.DataFrame, history_len: int) -> pd.DataFrame:
    """Recompute ``hist_item_ids`` from the frame's own rows (each user's earlier rows).

    Used for the published random-split protocol: there a user's held-out interactions
    must not appear in the training examples' histories.
    """
    ordered = frame.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    hist: list[list[str]] = []
    for _, group in ordered.groupby("user_id", sort=False):
        items = group["item_id"].astype(str).tolist()
        ts = group["ts"].to_numpy()
        for i in range(len(items)):
            j = int(np.searchsorted(ts, ts[i], side="left"))  # strictly earlier timestamps
            hist.append(items[max(0, j - history_len) : j][::-1])
    ordered = ordered.copy()
    ordered["hist_item_ids"] = pd.Series(hist, dtype=object)
    return ordered


def histories_bag(
    frame: pd.DataFrame, history_len: int, *, seed: int, copies: int = 1
) -> pd.DataFrame:
    """Each row's history = a random sample of the user's *other* rows' items.

    For the published random-split protocol, where time order carries no signal: the
    model learns to predict one of a user's items from the rest of them, and at
    evaluation the history is the user's training items. ``copies`` repeats the frame
    with fresh samples (augmentation).
    """
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(copies):
        ordered = frame.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
        hist: list[list[str]] = []
        for _, group in ordered.groupby("user_id", sort=False):
            items = np.asarray(group["item_id"].astype(str).tolist(), dtype=object)
            n = len(items)
            for i in range(n):
                others = np.delete(np.arange(n), i)
                take = rng.permutation(others)[:history_len]
                hist.append(items[take].tolist())
        ordered = ordered.copy()
        ordered["hist_item_ids"] = pd.Series(hist, dtype=object)
        parts.append(ordered)
    return pd.concat(parts, ignore_index=True)
