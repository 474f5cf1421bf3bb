"""Cross-validation over users for the ranker's choices (``ranker.Ranker.fit``).

Why k folds rather than one held-out share of the users: the choices (a tree setting of
``ranker.PARAM_GRID``, or none, and the number of rounds) differ by a few thousandths of
NDCG@10, about the noise of a fifth of a small data set's users. One random fifth flipped
the choice between seeds (on ML-100K a five-slice ranker learned the whole order at seed 7
because it won its held-out fifth by 0.004, and lost on the test part). Every user is
held out once here, and the rounds are where the folds' mean validation curve peaks (as
``lightgbm.cv`` does), not one holdout's best iteration.

The folds' boosters grow in lockstep, one round each, so that early stopping can watch the
mean curve; ``lightgbm.cv`` does the same but would rebuild the folds' init scores (the
prior, standardised per query) itself.

The query structure every ranker computation shares (:func:`query_key`,
:func:`query_sizes`) and the validation metric (:func:`group_ndcg`) live here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def user_folds(users: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold in ``0..k-1`` for each of ``users`` (distinct ids), sizes within one of
    each other, drawn with ``seed``."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least two folds, got {k}")
    order = np.random.default_rng(seed).permutation(len(users))
    out = np.empty(len(users), dtype=np.int64)
    out[order] = np.arange(len(users)) % k
    return out


def lockstep(
    params: dict[str, Any], pairs: Sequence[tuple[Any, Any]], max_rounds: int, patience: int
) -> tuple[list[Any], int, list[float]]:
    """Boosters of every (train, valid) ``lightgbm.Dataset`` pair grown one round at a time,
    stopped when the mean validation metric (the first of ``params``' metrics) has not
    risen for ``patience`` rounds. Returns the boosters (their ``best_iteration`` set to
    the peak, so that ``predict`` stops there), the peak's round, and the mean curve."""
    import lightgbm as lgb

    boosters = []
    for train, valid in pairs:
        booster = lgb.Booster(params=params, train_set=train)
        booster.add_valid(valid, "valid")
        boosters.append(booster)
    curve: list[float] = []
    best_at = 0
    for _ in range(max_rounds):
        for booster in boosters:
            booster.update()
        curve.append(float(np.mean([b.eval_valid()[0][2] for b in boosters])))
        if curve[-1] > curve[best_at]:
            best_at = len(curve) - 1
        if len(curve) - 1 - best_at >= patience:
            break
    for booster in boosters:
        booster.best_iteration = best_at + 1
    return boosters, best_at + 1, curve


def query_key(rows: pd.DataFrame) -> np.ndarray:
    """One key per ranking query: the user, within its training fold when rows from
    several folds (a ``fold`` column) are stacked."""
    if "fold" not in rows:
        return rows["user_id"].to_numpy()
    return (rows["fold"].astype(str) + "|" + rows["user_id"].astype(str)).to_numpy()


def query_sizes(rows: pd.DataFrame) -> np.ndarray:
    """Group sizes in row order (rows of a query are contiguous)."""
    keys = query_key(rows)
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    return np.diff(np.concatenate([[0], change, [len(keys)]]))


def group_ndcg(rows: pd.DataFrame, scores: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over the queries of ``rows`` (rows of a query contiguous)."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    out, start = [], 0
    labels = rows["label"].to_numpy()
    for size in query_sizes(rows):
        lab, sc = labels[start : start + size], scores[start : start + size]
        top = lab[np.argsort(-sc, kind="stable")[:k]]
        out.append((top * disc[: len(top)]).sum() / disc[: min(max(lab.sum(), 1), k)].sum())
        start += size
    return float(np.mean(out)) if out else 0.0
