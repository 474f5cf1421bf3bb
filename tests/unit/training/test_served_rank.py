"""The served two-stage path computes what training computes: on fixed user states, the
numpy sources, merge, features and scores of ``rtrec.training.served_rank`` (what a
request runs) equal the pandas rows of ``rank_features`` and ``Ranker.predict`` (what the
ranker is fitted and evaluated on), after a round trip through a saved bundle."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rtrec.training.artifacts import RANKER_DIR, RANKER_META, load_bundle, save_bundle
from rtrec.training.candidates import UserState
from rtrec.training.examples import histories_within
from rtrec.training.index import build_index
from rtrec.training.ranker import Ranker, TwoStage, ranking_rows, rows_for
from rtrec.training.ranker_bundle import load_ranker, save_ranker
from rtrec.training.served_rank import FEATURES
from rtrec.training.trainer import TrainConfig, fit
from rtrec.training.two_stage import SourceConfig, build_generator

from rtrec.errors import InvalidInput
from tests.unit.training.test_two_stage import DAY, clustered

N = 40
TT_FEATURES = {"tt_score", "tt_score_gap", "src_two_tower_score"}
"""Scores from float32 dot products: equal to float32 rounding, not bit for bit."""


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    events = histories_within(clustered(n_users=80, n_items=120, per_user=24), 10)
    events.loc[events.index % 7 == 0, "event_type"] = "click"
    # Some items in two or three categories: the category sums' order is exercised.
    number = events["item_id"].str[1:].astype(int)
    events["item_categories"] = [
        [*cats, *(["even"] if n % 2 == 0 else []), *(["fifth"] if n % 5 == 0 else [])]
        for cats, n in zip(events["item_categories"], number, strict=True)
    ]
    now = 16 * DAY
    past, future = events[events.ts < now], events[events.ts >= now]
    model = fit(past, TrainConfig(epochs=2, dim=16, history_len=10, select_best=False))
    # A history limit below the users' 16 events and 6 neighbours per item: the served
    # configuration's truncations are exercised.
    config = SourceConfig.served(history_limit=12, neighbours=6)
    gen = build_generator(past, model, ease_l2=10.0, per_source=30, config=config)
    rows = ranking_rows(gen, past, future, now=now, n=N)
    params = {**Ranker().params, "num_threads": 1, "min_data_in_leaf": 5}
    ranker = Ranker(max_rounds=40, patience=10, params=params, grid=({},)).fit(rows)
    two_stage = TwoStage(gen, ranker, n=N)
    directory = tmp_path_factory.mktemp("bundle") / "b"
    declared = save_ranker(directory, two_stage, model.item_ids, info={"test": 1})
    index = build_index(model.item_keys(), use_gpu=False)
    save_bundle(directory, model=model, index=index, extra={"ranker": declared})
    return past, now, two_stage, directory


def _states(past: pd.DataFrame, two_stage: TwoStage) -> list[UserState]:
    gen = two_stage.generator
    states = gen.states(past, ["u0", "u1", "u7", "nobody"])
    odd = UserState("odd", np.array(["i3", "gone", "i60"], dtype=object), np.array([5 * DAY]))
    return [*states, odd]


def test_served_candidates_features_and_scores_equal_trainings(fitted) -> None:
    past, now, two_stage, directory = fitted
    bundle = load_bundle(directory, use_gpu=False)
    served = load_ranker(bundle)
    assert served.model.booster is not None and served.model.booster.num_trees() >= 1
    assert served.model.features == list(FEATURES)
    assert served.trees_engine == "compiled"  # lleaves, a dependency
    gen, ranker = two_stage.generator, two_stage.ranker
    states = _states(past, two_stage)
    rows = rows_for(gen, states, now, N)
    expected_scores = ranker.predict(rows)
    queries = gen.sources[0].queries([s for s in states if not s.cold])
    q_of = dict(zip([s.user_id for s in states if not s.cold], queries, strict=True))
    for state in states:
        mine = rows["user_id"].to_numpy() == state.user_id
        hist = bundle.encoders.items.encode(state.items.astype(str)) - 1
        query = q_of.get(state.user_id)
        search = None
        if query is not None:
            k = min(served.search_k(len(state.items)), bundle.index.ntotal)
            scores, found = bundle.search_rows(query[None, :], k)
            search = (scores[0], found[0])
        ranked = served.rank(state, hist, query, search, now)
        merged = ranked.merged
        ids = [bundle.item_ids[p] for p in merged.pos]
        assert ids == list(rows.loc[mine, "item_id"]), state.user_id
        cols = served.columns(merged, state, hist, query, now)
        x = served.matrix(cols, len(merged.pos))
        for j, name in enumerate(ranker.features):
            want = rows.loc[mine, name].to_numpy(dtype=np.float64)
            tol = 2e-5 if name in TT_FEATURES else 1e-9
            np.testing.assert_allclose(x[:, j], want, rtol=tol, atol=tol, err_msg=name)
        got = served.predict(x, cols)
        np.testing.assert_allclose(got, expected_scores[mine], rtol=1e-5, atol=1e-5)
        trees = served.model.booster.predict(x, num_threads=1)
        np.testing.assert_allclose(served._trees(x), trees, rtol=1e-12, atol=1e-12)
        assert list(ranked.pos) == list(merged.pos[np.argsort(-got, kind="stable")])


def test_every_source_contributes_and_cold_users_get_popularity(fitted) -> None:
    past, now, two_stage, _ = fitted
    rows = rows_for(two_stage.generator, _states(past, two_stage), now, N)
    warm = rows[rows["user_id"] == "u0"]
    assert {"two_tower", "item_item", "category", "popular"} <= set(
        "+".join(warm["sources"]).split("+")
    )
    assert set(rows.loc[rows["user_id"] == "nobody", "sources"]) == {"popular"}


@pytest.mark.parametrize("cold_trees", [True, False])
def test_a_cold_user_is_ranked_as_training_ranks_it_with_or_without_the_trees(
    fitted, cold_trees: bool
) -> None:
    past, now, two_stage, directory = fitted
    served = load_ranker(load_bundle(directory, use_gpu=False))
    served.model = replace(served.model, cold_trees=cold_trees)
    ranker = copy.copy(two_stage.ranker)
    ranker.cold_trees = cold_trees
    state = two_stage.generator.states(past, ["nobody"])[0]
    rows = rows_for(two_stage.generator, [state], now, N)
    want = ranker.predict(rows)
    hist = np.full(0, -1, dtype=np.int64)
    ranked = served.rank(state, hist, None, None, now)
    cols = served.columns(ranked.merged, state, hist, None, now)
    got = served.predict(served.matrix(cols, len(ranked.merged.pos)), cols)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if not cold_trees:  # the popular source's order, untouched
        assert not want.any() and list(ranked.pos) == list(ranked.merged.pos)


def test_a_damaged_ranker_is_refused_with_the_reason(fitted, tmp_path: Path) -> None:
    import shutil

    _, _, _, directory = fitted
    copy = tmp_path / "b"
    shutil.copytree(directory, copy)
    meta = copy / RANKER_DIR / RANKER_META
    meta.write_text(meta.read_text().replace('"prior_weight"', '"prior_weight" '))
    with pytest.raises(InvalidInput, match="fails its checksum"):
        load_ranker(load_bundle(copy, use_gpu=False))
    shutil.rmtree(copy / RANKER_DIR)
    with pytest.raises(InvalidInput, match="is missing"):
        load_ranker(load_bundle(copy, use_gpu=False))


def test_category_recency_counts_items_since_the_category_was_last_seen() -> None:
    from rtrec.training.rank_features import category_recency

    cats = {"i1": ["a"], "i2": ["b"], "i3": ["c"], "i4": ["b"], "i5": ["c", "a"], "i6": ["z"]}
    newest_first = np.array(["i3", "i1", "i2"], dtype=object)
    states = [
        UserState("u1", newest_first, np.array([3, 2, 1])),
        UserState("u2", newest_first[:0], np.array([], np.int64)),
    ]
    cands = pd.DataFrame(
        {"user_id": ["u1", "u1", "u1", "u1", "u2"], "item_id": ["i4", "i5", "i6", "i7", "i4"]}
    )
    got = category_recency(cands, states, cats)
    # i4 (b): two newer items before i2; i5 (c or a): its latest item i3 is in c; i6: a
    # category the user never saw; i7: no category; u2: no history.
    np.testing.assert_array_equal(got, [2.0, 0.0, np.nan, np.nan, np.nan])


def test_each_tree_engine_scores_as_lightgbm_and_a_broken_one_is_passed_over_loudly(
    fitted, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The compiled forest and the direct C call score as ``Booster.predict`` does; when
    the compiler fails, the direct call serves, said at WARNING with the reason; when
    both fail, the wrapper."""
    import logging

    from rtrec.training import served_trees

    booster = load_ranker(load_bundle(fitted[3], use_gpu=False)).model.booster
    n = booster.num_feature()
    x = np.random.default_rng(5).standard_normal((200, n))
    x[::3, ::2] = np.nan
    want = booster.predict(x, num_threads=1)
    np.testing.assert_allclose(served_trees.compiled(booster)(x), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(served_trees.DirectPredict(booster)(x), want)

    def broken(_: object) -> None:
        raise ImportError("no lleaves here")

    monkeypatch.setattr(served_trees, "compiled", broken)
    with caplog.at_level(logging.WARNING, logger="rtrec.training.served_trees"):
        scorer, name = served_trees.tree_scorer(booster, n)
    assert name == "lightgbm_direct" and "no lleaves here" in caplog.text
    np.testing.assert_array_equal(scorer(x), want)
    # Served so, the degradation is counted and named in /status.
    from prometheus_client import REGISTRY
    from rtrec.serving.ranking import TREES_NOT_COMPILED, load_stage

    def counted() -> float:
        labels = {"reason": TREES_NOT_COMPILED}
        return REGISTRY.get_sample_value("rtrec_serving_degradations_total", labels) or 0.0

    before = counted()
    stage = load_stage(load_bundle(fitted[3], use_gpu=False))
    assert stage.status["trees"] == "lightgbm_direct" and counted() == before + 1
    monkeypatch.setattr(served_trees, "DirectPredict", broken)
    scorer, name = served_trees.tree_scorer(booster, n)
    assert name == "lightgbm"
    np.testing.assert_array_equal(scorer(x), want)
