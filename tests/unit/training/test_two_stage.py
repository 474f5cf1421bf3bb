"""Two-stage recommendations on tiny data: candidate sources (dedupe, provenance, cold
users), the point-in-time ranking rows, and the LightGBM ranker's fit and predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from rtrec.training.candidates import (
    Candidates,
    CategoryTrendingSource,
    PopularSource,
    UserState,
    item_categories,
    merge,
    user_states,
)
from rtrec.training.evaluate import evaluate
from rtrec.training.examples import histories_within
from rtrec.training.learned_sources import ItemItemSource
from rtrec.training.rank_features import CandidateGenerator, item_table
from rtrec.training.ranker import Ranker, TwoStage, candidate_recall, ranking_rows
from rtrec.training.trainer import TrainConfig, fit
from rtrec.training.two_stage import build_generator

DAY = 86_400_000


def clustered(n_users: int = 120, n_items: int = 100, per_user: int = 20, seed: int = 0):
    """Users in 4 taste clusters, each reading its own quarter of the catalog (category
    ``c<cluster>``), one event a day per user."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        c = u % 4
        items = rng.choice(np.arange(c * n_items // 4, (c + 1) * n_items // 4), per_user, False)
        rows += [
            {"user_id": f"u{u}", "item_id": f"i{i}", "ts": t * DAY, "event_type": "view"}
            | {"item_categories": [f"c{c}"]}
            for t, i in enumerate(items)
        ]
    return pd.DataFrame(rows)


def cands(items: list[str]) -> Candidates:
    return Candidates(np.array(items, dtype=object), np.linspace(1, 0, len(items)))


def test_merge_dedupes_and_records_every_source_of_a_candidate() -> None:
    answers = {"a": [cands(["x", "y", "z"])], "b": [cands(["y", "w"])]}
    out = merge(answers, ["u1"], n=10)
    assert sorted(out["item_id"]) == ["w", "x", "y", "z"]
    y = out.set_index("item_id").loc["y"]
    assert (y["sources"], y["src_a_rank"], y["src_b_rank"], y["n_sources"]) == ("a+b", 2, 1, 2)
    assert np.isnan(out.set_index("item_id").loc["x", "src_b_rank"])
    # Round robin: y (first in b) comes before x's tie only because two sources found it.
    assert list(out["item_id"]) == ["y", "x", "w", "z"]
    assert list(merge(answers, ["u1"], n=2)["item_id"]) == ["y", "x"]
    # A source at weight 0.5 gets one place for every two of the other.
    weighted = merge(answers, ["u1"], n=10, weights={"b": 0.5})
    assert list(weighted["item_id"]) == ["x", "y", "z", "w"]


def test_cold_users_get_popular_candidates_only_and_nobody_gets_seen_items() -> None:
    events = clustered()
    cats = item_categories(events)
    sources = [ItemItemSource(l2=10.0), CategoryTrendingSource(cats), PopularSource()]
    gen = CandidateGenerator(sources, per_source=30, item_categories=cats).fit(events)
    states = user_states(events, ["u0", "nobody"])
    out = gen.generate(states, n=40)
    cold = out[out["user_id"] == "nobody"]
    assert len(cold) == 30 and set(cold["sources"]) == {"popular"}
    warm = out[out["user_id"] == "u0"]
    # u0 has seen 20 of its cluster's 25 items: the union is short of 40, never seen items.
    assert 30 <= len(warm) <= 40 and not set(warm["item_id"]) & set(states[0].items)
    assert {"item_item", "category"} <= {s for v in warm["sources"] for s in v.split("+")}
    # The category source keeps to the user's categories (u0 reads c0: items i0..i24).
    mine = warm[warm["src_category_rank"].notna()]
    assert set(mine["item_id"]) <= {f"i{i}" for i in range(25)}


def test_item_item_neighbours_are_the_users_cluster() -> None:
    events = clustered()
    src = ItemItemSource(l2=10.0, neighbours=20).fit(events)
    (state,) = user_states(events, ["u1"])
    (got,) = src.candidates([state], 10)
    # u1 (cluster c1: i25..i49) has seen 20 of them: the other 5 are all it can reach, as
    # EASE's weights across clusters are zero.
    assert set(got.items) == {f"i{i}" for i in range(25, 50)} - set(state.items)
    assert (np.diff(got.scores) <= 0).all()


def test_ranking_rows_see_nothing_at_or_after_now() -> None:
    events = clustered()
    now = 15 * DAY
    past, future = events[events.ts < now], events[events.ts >= now]
    sources = [ItemItemSource(l2=10.0), PopularSource()]
    gen = CandidateGenerator(sources, per_source=30).fit(past)
    rows = ranking_rows(gen, events, future, now=now, n=40)
    # Altering every event at or after ``now`` leaves features and candidates unchanged;
    # only the labels read the future.
    shuffled = future.assign(item_id=np.random.default_rng(1).permutation(future["item_id"]))
    again = ranking_rows(gen, pd.concat([past, shuffled]), future, now=now, n=40)
    pd.testing.assert_frame_equal(rows, again)
    assert rows["label"].sum() > 0
    hist = {u: set(g["item_id"]) for u, g in past.groupby("user_id")}
    assert not any(i in hist[u] for u, i in zip(rows["user_id"], rows["item_id"], strict=True))
    assert rows["item_age_days"].max() <= now / DAY
    assert (rows["user_events"] == 15).all()  # one event a day before day 15
    with pytest.raises(ValueError, match="generator saw events"):
        ranking_rows(CandidateGenerator(sources).fit(events), events, future, now=now)
    with pytest.raises(ValueError, match="labels start before now"):
        ranking_rows(gen, events, events, now=now)


def test_item_table_ignores_events_at_or_after_now() -> None:
    events = clustered()
    now = 10 * DAY
    table = item_table(events, now)
    expected = item_table(events[events.ts < now], now)
    pd.testing.assert_frame_equal(table, expected)
    assert table["pop_all"].sum() == pytest.approx(1.0)


def test_ranker_learns_an_informative_feature_on_a_tiny_set() -> None:
    rng = np.random.default_rng(0)
    n_users, per = 60, 20
    label = (rng.random((n_users, per)) < 0.2).astype(np.int8)
    label[:, 0] = 1
    rows = pd.DataFrame(
        {
            "user_id": np.repeat([f"u{u:02d}" for u in range(n_users)], per),
            "item_id": [f"i{j}" for _ in range(n_users) for j in range(per)],
            "signal": label.ravel() + rng.normal(0, 0.3, n_users * per),
            "noise": rng.normal(size=n_users * per),
            "label": label.ravel(),
        }
    )
    ranker = Ranker(max_rounds=50, patience=10, params={"min_data_in_leaf": 5, "num_threads": 1})
    ranker.params |= {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10]}
    ranker.params |= {"verbosity": -1}
    ranker.fit(rows)
    assert ranker.features == ["signal", "noise"] and ranker.best_rounds >= 1
    scores = ranker.predict(rows)
    assert np.corrcoef(scores, rows["signal"])[0, 1] > 0.8
    assert next(iter(ranker.importance())) == "signal"


def test_two_stage_end_to_end_ranks_candidates_first_and_beats_popularity() -> None:
    events = histories_within(clustered(), 10)
    now = 15 * DAY
    past, future = events[events.ts < now], events[events.ts >= now]
    model = fit(past, TrainConfig(epochs=2, dim=16, history_len=10, select_best=False))
    gen = build_generator(past, model, ease_l2=10.0, per_source=30)
    assert [s.name for s in gen.sources] == ["two_tower", "item_item", "category", "popular"]
    rows = ranking_rows(gen, past, future, now=now, n=30)
    assert rows["src_two_tower_rank"].notna().any() and rows["tt_score"].notna().all()
    ranker = Ranker(max_rounds=30, patience=5, params={**Ranker().params, "num_threads": 1})
    two_stage = TwoStage(gen, ranker.fit(rows), n=30)
    scores = two_stage.score(past, ["u0", "u1"])
    assert scores.shape == (2, len(two_stage.item_ids))
    top30 = {two_stage.item_ids[j] for j in np.argsort(-scores[0])[:30]}
    assert top30 == set(rows.loc[rows["user_id"] == "u0", "item_id"])
    figures = evaluate(two_stage, past, future)
    assert figures["ndcg@10"] > 0.2  # popularity alone is below 0.1 on four clusters
    recall = candidate_recall(rows, future, ["two_tower", "item_item"], n=30)
    assert 0 < recall["item_item"] <= recall["merged"] <= 1


def test_user_states_are_newest_first_and_cut_at_before() -> None:
    events = pd.DataFrame({"user_id": ["a", "a", "a"], "item_id": ["x", "y", "z"]})
    events["ts"] = [3, 1, 2]
    (state,) = user_states(events, ["a"], before=3)
    assert list(state.items) == ["z", "y"] and list(state.ts) == [2, 1]
    assert UserState("b", np.array([]), np.array([])).cold


def test_merge_weights_are_chosen_on_the_fold_and_carried_to_the_served_generator() -> None:
    from rtrec.training.two_stage import (
        WEIGHT_GRID,
        WEIGHTS,
        Fold,
        choose_weights,
        fit_two_stage,
        fold_answers,
    )

    events = histories_within(clustered(), 10)
    now = 15 * DAY
    past, future = events[events.ts < now], events[events.ts >= now]
    model = fit(past, TrainConfig(epochs=2, dim=16, history_len=10, select_best=False))
    fold = Fold(past, future, model, now=now)
    gen = build_generator(past, model, ease_l2=10.0, per_source=30)
    weights, tried = choose_weights(*fold_answers(fold, gen), fold.labels, 30)
    assert len(tried) == len(WEIGHT_GRID) and WEIGHTS in WEIGHT_GRID
    # The choice recalls at least as much of the fold's labels as every other set tried.
    assert tried[json.dumps(weights, sort_keys=True)] == max(tried.values())
    ranker = Ranker(max_rounds=20, patience=5, params={**Ranker().params, "num_threads": 1})
    two_stage, info = fit_two_stage(
        [fold], events, final_model=model, ease_l2=10.0, n=30, ranker=ranker
    )
    assert info["merge_weights"] == weights and two_stage.generator.weights == weights
