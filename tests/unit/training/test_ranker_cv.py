"""Cross-validation over users for the ranker's choices: balanced user folds, boosters
grown in lockstep and stopped on the folds' mean validation curve, and every user held
out once by ``Ranker.fit``."""

from __future__ import annotations

import numpy as np
import pytest
from rtrec.training.ranker import Ranker
from rtrec.training.ranker_cv import lockstep, query_sizes, user_folds

from tests.unit.training.test_rank_learning import _rows

PARAMS = {**Ranker().params, "num_threads": 1, "min_data_in_leaf": 5}


def test_user_folds_are_balanced_seeded_and_need_two() -> None:
    users = np.array([f"u{i}" for i in range(10)])
    folds = user_folds(users, 3, seed=1)
    assert sorted(np.bincount(folds).tolist()) == [3, 3, 4]
    np.testing.assert_array_equal(folds, user_folds(users, 3, seed=1))
    assert not np.array_equal(folds, user_folds(users, 3, seed=2))
    with pytest.raises(ValueError):
        user_folds(users, 1, seed=0)


def _pairs(informative: bool) -> list:
    """Two (train, valid) LightGBM data sets over disjoint users of :func:`_rows`."""
    import lightgbm as lgb

    rows = _rows(80, 20, informative=informative)
    rows = rows[["user_id", "tt_score", "signal", "label"]]
    half = rows["user_id"] < "u040"
    pairs = []
    for fit_part, val in ((rows[half], rows[~half]), (rows[~half], rows[half])):
        train = lgb.Dataset(fit_part[["signal"]], fit_part["label"], group=query_sizes(fit_part))
        valid = lgb.Dataset(val[["signal"]], val["label"], group=query_sizes(val), reference=train)
        pairs.append((train, valid))
    return pairs


def test_lockstep_stops_on_the_mean_curve_and_predicts_at_its_peak() -> None:
    boosters, rounds, curve = lockstep(PARAMS, _pairs(informative=True), 40, 5)
    assert len(boosters) == 2 and 1 <= rounds <= len(curve) <= 40
    assert curve[rounds - 1] == max(curve)
    assert all(b.best_iteration == rounds for b in boosters)
    # Stopped no later than ``patience`` rounds after the peak.
    assert len(curve) == 40 or len(curve) - rounds == 5


def test_ranker_chooses_by_cross_validation_and_refits_on_all_users() -> None:
    ranker = Ranker(params=dict(PARAMS), grid=({},), max_rounds=40, patience=5, folds=4)
    ranker.fit(_rows(100, 20, informative=True))
    assert ranker.best_rounds >= 1 and ranker.valid_ndcg > ranker.prior_ndcg
    assert ranker.booster.num_trees() == ranker.best_rounds
    assert next(iter(ranker.importance())) == "signal"
