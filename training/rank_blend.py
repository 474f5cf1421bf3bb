"""The ranker's prior: the retrieval scores standardised within each query and blended,
the blend learned (a logistic regression of the label on the scores) or searched (a grid
over the weights), and NDCG@10 over queries, which judges both. Queries are a user's
candidates within a training fold (:func:`query_key`). numpy and pandas only.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from rtrec.training.rank_features import SCORE_COLUMNS


def query_key(rows: pd.DataFrame) -> np.ndarray:
    """One key per ranking query: the user, within its training fold when rows from
    several folds (a ``fold`` column) are stacked."""
    if "fold" not in rows:
        return rows["user_id"].to_numpy()
    return (rows["fold"].astype(str) + "|" + rows["user_id"].astype(str)).to_numpy()


def _groups(rows: pd.DataFrame) -> np.ndarray:
    """Group sizes in row order (rows of a query are contiguous)."""
    keys = query_key(rows)
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    return np.diff(np.concatenate([[0], change, [len(keys)]]))


BLEND_STEP = 0.1
"""Spacing of the weight grid (over the simplex of the scorers' weights) searched for the
prior on the fitting users."""


def _z(rows: pd.DataFrame, column: str) -> np.ndarray:
    """Per-query standardised score; a candidate the scorer cannot score sits far below
    (no such column: no contribution)."""
    if column not in rows:
        return np.zeros(len(rows))
    g = rows[column].groupby(query_key(rows))
    z = (rows[column] - g.transform("mean")) / g.transform("std")
    return z.fillna(-5.0).to_numpy()


def prior(rows: pd.DataFrame, weights: dict[str, float]) -> np.ndarray:
    """The trees' starting point: a weighted sum of the retrieval scores, each standardised
    within its query (``weights``: score column -> weight)."""
    out = np.zeros(len(rows))
    for column, w in weights.items():
        out += w * _z(rows, column)
    return out


def _simplex(d: int, step: float) -> list[np.ndarray]:
    """Every weight vector of ``d`` non-negative multiples of ``step`` summing to 1."""
    m = round(1.0 / step)
    heads = (h for h in itertools.product(range(m + 1), repeat=d - 1) if sum(h) <= m)
    return [np.array([*h, m - sum(h)]) / m for h in heads]


def logistic_blend(rows: pd.DataFrame, columns: list[str], l2: float = 1.0) -> dict[str, float]:
    """Weights of a logistic regression of the label on the standardised scores (Newton's
    method, a little L2): a blend learned from every candidate's label rather than a search
    over weights, and one that takes any number of scorers."""
    z = np.column_stack([_z(rows, c) for c in columns] + [np.ones(len(rows))])
    y = rows["label"].to_numpy(dtype=np.float64)
    w = np.zeros(z.shape[1])
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        grad = z.T @ (p - y) + l2 * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return dict(zip(columns, w[:-1].tolist(), strict=True))


def blend_candidates(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Prior weights worth trying on held-out users: the logistic blend and the grid point
    best on ``rows`` (NDCG@10 of their queries) over the scorers ``rows`` carries."""
    columns = [c for c in SCORE_COLUMNS if c in rows and rows[c].notna().any()]
    if not columns:
        return {"none": {}}
    grid = [dict(zip(columns, v.tolist(), strict=True)) for v in _simplex(len(columns), BLEND_STEP)]
    best = max(grid, key=lambda w: group_ndcg(rows, prior(rows, w)))
    return {"grid": best, "logistic": logistic_blend(rows, columns)}


def group_ndcg(rows: pd.DataFrame, scores: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over the queries of ``rows`` (rows of a query contiguous)."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    out, start = [], 0
    labels = rows["label"].to_numpy()
    for size in _groups(rows):
        lab, sc = labels[start : start + size], scores[start : start + size]
        top = lab[np.argsort(-sc, kind="stable")[:k]]
        out.append((top * disc[: len(top)]).sum() / disc[: min(max(lab.sum(), 1), k)].sum())
        start += size
    return float(np.mean(out)) if out else 0.0
