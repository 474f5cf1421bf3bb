"""The third scorer and the ranker's prior: RP3beta's walk weights and their source, the
choice of its popularity penalty on labels, and the learned blend of standardised scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
from rtrec.training.candidates import user_states
from rtrec.training.learned_sources import (
    RP3_BETAS,
    RP3betaSource,
    choose_rp3beta,
    rp3beta_weights,
)
from rtrec.training.ranker import Ranker, _simplex, blend_candidates, logistic_blend, prior
from rtrec.training.vocab import Vocab

from tests.unit.training.test_two_stage import clustered


def test_rp3beta_weights_are_two_step_walk_probabilities_over_popularity() -> None:
    # u1 reads a, b; u2 reads a, c. From a: to u1 or u2 (1/2 each), then to the user's
    # other item (1/2 each): P(a->b) = P(a->c) = 1/4.
    events = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2"], "item_id": ["a", "b", "a", "c"]})
    cat = Vocab.build(events["item_id"])
    pos = {i: cat.encode([i])[0] - 1 for i in "abc"}
    w = rp3beta_weights(events, cat, beta=0.0)
    assert w[pos["a"], pos["b"]] == np.float32(0.25) and w[pos["a"], pos["c"]] == np.float32(0.25)
    # From b the walk reaches u1 only, then a (1/2): the diagonal is dropped.
    assert w[pos["b"], pos["a"]] == np.float32(0.5) and w[pos["b"], pos["b"]] == 0.0
    assert w[pos["b"], pos["c"]] == 0.0
    # beta divides by the target's degree: a (two users) loses against b and c (one each).
    penalised = rp3beta_weights(events, cat, beta=1.0)
    assert penalised[pos["b"], pos["a"]] == np.float32(0.25)
    assert penalised[pos["a"], pos["b"]] == np.float32(0.25)


def test_rp3beta_source_scores_the_users_own_cluster_and_names_its_features() -> None:
    events = clustered(n_users=60, n_items=60, per_user=10)
    src = RP3betaSource(beta=0.5).fit(events)
    (state,) = user_states(events, ["u1"])  # cluster 1 reads i15..i29
    (cands,) = src.candidates([state], 5)
    assert all(15 <= int(i[1:]) < 30 for i in cands.items)
    assert not set(cands.items) & set(state.items)
    items = np.array(["i16", "i0"], dtype=object)
    feats = src.pair_features([state], np.full(2, "u1", dtype=object), items)
    assert sorted(feats) == ["rp_links", "rp_max", "rp_recent", "rp_score"]
    assert feats["rp_score"][0] > 0 and feats["rp_score"][1] == 0


def test_choose_rp3beta_picks_a_penalty_from_the_grid_on_the_labels() -> None:
    events = clustered(n_users=60, n_items=60, per_user=10)
    state, labels = events[events.ts < 7 * 86_400_000], events[events.ts >= 7 * 86_400_000]
    assert choose_rp3beta(state, labels) in RP3_BETAS
    # No labelled user with a history: the middle of the grid, not an error.
    stranger = pd.DataFrame({"user_id": ["new"], "item_id": ["i1"], "ts": [0]})
    assert choose_rp3beta(state, stranger) == RP3_BETAS[len(RP3_BETAS) // 2]


def _scored_rows(n_users: int = 200, per: int = 20, seed: int = 0) -> pd.DataFrame:
    """Queries where ``ii_score`` tells the positives apart and ``tt_score`` is noise."""
    rng = np.random.default_rng(seed)
    label = (rng.random((n_users, per)) < 0.2).astype(np.int8)
    label[:, 0] = 1
    return pd.DataFrame(
        {
            "user_id": np.repeat([f"u{u:03d}" for u in range(n_users)], per),
            "item_id": [f"i{j}" for _ in range(n_users) for j in range(per)],
            "tt_score": rng.normal(size=label.size),
            "ii_score": (label + rng.normal(0, 0.5, label.shape)).ravel(),
            "label": label.ravel(),
        }
    )


def test_simplex_points_are_non_negative_and_sum_to_one() -> None:
    points = _simplex(3, 0.25)
    assert len(points) == 15  # C(4 + 2, 2)
    assert all(np.isclose(p.sum(), 1.0) and (p >= 0).all() for p in points)
    assert len({tuple(p) for p in points}) == len(points)


def test_the_learned_blend_weights_the_informative_score() -> None:
    rows = _scored_rows()
    w = logistic_blend(rows, ["tt_score", "ii_score"])
    assert w["ii_score"] > 1.0 and abs(w["tt_score"]) < 0.2 * w["ii_score"]
    blends = blend_candidates(rows)
    assert set(blends) == {"grid", "logistic"}
    assert blends["grid"]["ii_score"] >= 0.9  # the grid point best on the rows
    assert blends["grid"].keys() == {"tt_score", "ii_score"}  # no rp_score column: not blended


def test_the_ranker_takes_its_prior_from_the_blend_and_averages_its_trees() -> None:
    rows = _scored_rows()
    params = {**Ranker().params, "num_threads": 1, "min_data_in_leaf": 5}
    ranker = Ranker(params=params, grid=({},), max_rounds=30, patience=5, ensemble=2).fit(rows)
    assert ranker.blend in ("grid", "logistic")
    assert ranker.prior_weights["ii_score"] > ranker.prior_weights["tt_score"]
    assert ranker.prior_ndcg > 0.9
    expected = prior(rows, ranker.prior_weights)
    if ranker.best_rounds:
        assert len(ranker.boosters) == 2
        raw = np.mean([b.predict(rows[ranker.features]) for b in ranker.boosters], axis=0)
        expected = expected + raw
    np.testing.assert_allclose(ranker.predict(rows), expected, rtol=1e-6)
