"""bench/quality_ceiling.py's scorers and blends, on a tiny interaction matrix: each
scorer is what its docstring says, and the blend grid is the one the README counts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "quality_ceiling.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality_ceiling", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


X = np.array([[1, 1, 0, 0, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=np.float64)


def test_standardised_scores_rank_unseen_items_above_seen_ones(bench) -> None:
    scores = np.array([[5.0, 1.0, 2.0, 3.0]])
    mask = np.array([[True, False, False, False]])
    z = bench.standardised(scores, mask)
    assert z[0, 0] == -10.0  # seen: far below, whatever its raw score
    unseen = z[0, 1:]
    assert abs(unseen.mean()) < 1e-12 and abs(unseen.std() - 1.0) < 1e-12
    assert list(np.argsort(-unseen)) == [2, 1, 0]


def test_user_knn_leaves_the_user_out_of_its_own_neighbours(bench) -> None:
    rows = np.arange(len(X))
    got = bench.user_knn(X, X, rows, k=1)
    # User 0's single nearest other user is user 1 (two shared items): its items, alone.
    assert np.flatnonzero(got[0]).tolist() == [0, 1, 2]
    alone = bench.user_knn(X, X[:1], np.array([-1]), k=1)  # itself allowed: its own items
    assert np.flatnonzero(alone[0]).tolist() == [0, 1, 4]


def test_dlae_is_the_closed_form_ridge_with_dropout_penalty(bench) -> None:
    p, l2 = 0.5, 1.0
    g = X.T @ X
    b = np.linalg.solve(g + np.diag(p / (1 - p) * np.diag(g) + l2), g)
    np.testing.assert_allclose(bench.dlae(X, X[:2], p=p, l2=l2), X[:2] @ b)


def test_the_blend_grid(bench) -> None:
    z = {n: np.random.default_rng(0).random((2, 5)) for n in bench.SCORERS}
    out = bench.blends(z)
    pairs = len(bench.TT_WEIGHTS)
    third = (len(bench.SCORERS) - 2) * len(bench.THIRD_WEIGHTS)
    assert len(out) == len(bench.SCORERS) + pairs * (1 + third)
    np.testing.assert_allclose(out["tt1.0+EASE"], z["two_tower"])
    np.testing.assert_allclose(out["tt0.0+EASE+0.3DLAE"], 0.7 * z["EASE"] + 0.3 * z["DLAE"])
