"""The ranker's learning side: item-item pair features, ranking queries stacked from
several folds, the tree settings and prior chosen on held-out users, and the two-stage fit
over folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
from rtrec.training.baselines import EASE
from rtrec.training.candidates import user_states
from rtrec.training.examples import histories_within
from rtrec.training.learned_sources import ItemItemSource
from rtrec.training.ranker import Ranker, _cold_gain, prior
from rtrec.training.ranker_cv import query_key, query_sizes
from rtrec.training.trainer import TrainConfig, fit
from rtrec.training.two_stage import Fold, fit_two_stage

from tests.unit.training.test_two_stage import DAY, clustered


def test_item_item_keeps_every_weight_on_a_small_catalog_and_matches_ease() -> None:
    events = clustered(n_users=60, n_items=60, per_user=10)
    src = ItemItemSource(l2=10.0, neighbours=3).fit(events)
    users = ["u0", "u5"]
    ease = EASE(events, l2=10.0)
    expected = ease.score(events, users)
    states = user_states(events, users)
    items = np.array(ease.item_ids, dtype=object)
    for r, s in enumerate(states):
        got = src.pair_scores([s], np.full(len(items), s.user_id, dtype=object), items)
        np.testing.assert_allclose(got, expected[r], rtol=1e-4, atol=1e-5)


def test_pair_features_aggregate_the_links_from_the_history() -> None:
    events = clustered(n_users=60, n_items=60, per_user=10)
    src = ItemItemSource(l2=10.0).fit(events)
    (state,) = user_states(events, ["u1"])
    items = np.array(["i16", "i17", "i0", "unknown"], dtype=object)
    users = np.full(len(items), "u1", dtype=object)
    feats = src.pair_features([state], users, items)
    pos = src._cat.vocab.encode(items[:3]) - 1
    w = src.weights_to(state, pos)
    assert w.shape == (len(state.items), 3)
    np.testing.assert_allclose(feats["ii_score"][:3], w.sum(axis=0), rtol=1e-5)
    np.testing.assert_allclose(feats["ii_max"][:3], w.max(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(feats["ii_links"][:3], (w > 0).sum(axis=0))
    np.testing.assert_allclose(feats["ii_recent"][:3], w[:10].sum(axis=0), rtol=1e-5)
    # u1 reads cluster 1 (i15..i29): its own cluster links, another cluster's item does not.
    assert feats["ii_links"][1] > 0 and feats["ii_max"][2] <= 0
    assert all(np.isnan(v[3]) for v in feats.values())


def test_queries_of_several_folds_stay_apart() -> None:
    rows = pd.DataFrame({"user_id": ["a", "a", "a", "a", "b"], "fold": [0, 0, 1, 1, 1]})
    rows["tt_score"] = [1.0, 3.0, 10.0, 30.0, 5.0]
    assert list(query_sizes(rows)) == [2, 2, 1]
    assert len(set(query_key(rows))) == 3
    # Standardised within each query: the same order gives the same prior in both folds.
    p = prior(rows, 1.0)
    assert p[0] == p[2] and p[1] == p[3]


def _rows(n_users: int, per: int, informative: bool, seed: int = 0) -> pd.DataFrame:
    """Queries whose positives follow ``tt_score`` loosely; ``signal`` tells them apart
    exactly when ``informative``."""
    rng = np.random.default_rng(seed)
    label = (rng.random((n_users, per)) < 0.15).astype(np.int8)
    label[:, 0] = 1
    tt = label + rng.normal(0, 1.0, label.shape)
    signal = label + rng.normal(0, 0.1, label.shape) if informative else rng.normal(size=tt.shape)
    return pd.DataFrame(
        {
            "user_id": np.repeat([f"u{u:03d}" for u in range(n_users)], per),
            "item_id": [f"i{j}" for _ in range(n_users) for j in range(per)],
            "tt_score": tt.ravel(),
            "signal": signal.ravel(),
            "label": label.ravel(),
        }
    )


def test_ranker_adds_trees_only_where_they_beat_the_prior_on_held_out_users() -> None:
    params = {**Ranker().params, "num_threads": 1, "min_data_in_leaf": 5}
    grid = ({}, {"objective": "rank_xendcg"})
    useful = Ranker(params=dict(params), grid=grid, max_rounds=60, patience=10)
    useful.fit(_rows(100, 20, informative=True))
    assert useful.best_rounds >= 1 and useful.valid_ndcg > useful.prior_ndcg
    assert useful.chosen in grid and next(iter(useful.importance())) == "signal"
    useless = Ranker(params=dict(params), grid=grid, max_rounds=60, patience=10)
    useless.fit(_rows(100, 20, informative=False))
    rows = _rows(10, 20, informative=False, seed=1)
    if useless.best_rounds == 0:  # the prior alone ranks, exactly
        np.testing.assert_array_equal(useless.predict(rows), prior(rows, useless.prior_weight))
        assert useless.importance() == {}
    assert useless.valid_ndcg >= useless.prior_ndcg


def test_fit_two_stage_learns_from_every_fold() -> None:
    events = histories_within(clustered(), 10)
    cfg = TrainConfig(epochs=2, dim=16, history_len=10, select_best=False)
    folds = []
    for cut in (12 * DAY, 15 * DAY):
        state, labels = events[events.ts < cut], events[events.ts >= cut]
        folds.append(
            Fold(state, labels[labels.ts < cut + 3 * DAY], fit(state, cfg, progress=False), cut)
        )
    final = events[events.ts < 18 * DAY]
    model, info = fit_two_stage(
        folds, final, final_model=fit(final, cfg, progress=False), ease_l2=10.0, n=30
    )
    assert info["ranker_folds"] == 2
    assert info["ranker_rows"] == 2 * 120 * 30  # every user, 30 candidates, in both folds
    assert info["ranker_valid_ndcg@10"] >= info["prior_valid_ndcg@10"]
    assert model.generator.now == 17 * DAY + 1  # one past the final state's last event


def test_cold_users_keep_the_popular_order_unless_the_trees_beat_it_held_out() -> None:
    # "a" has no history (its rows in the popular source's order), "b" has.
    rows = pd.DataFrame(
        {
            "user_id": ["a"] * 3 + ["b"] * 3,
            "user_events": [0] * 3 + [5] * 3,
            "label": [1, 0, 0, 0, 0, 1],
        }
    )
    last_first = np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0])
    assert _cold_gain([rows], [last_first]) < 0  # the trees bury a's first pick
    assert _cold_gain([rows], [-last_first]) == 0  # the popular order itself
    assert _cold_gain([rows.assign(label=[0, 0, 1, 0, 0, 1])], [last_first]) > 0
    assert np.isnan(_cold_gain([rows.assign(user_events=5)], [last_first]))  # none cold
