"""The multinomial objective (published preset), full-catalog negatives and their bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rtrec.training.artifacts import load_bundle, save_bundle
from rtrec.training.baselines import MostPopular
from rtrec.training.evaluate import evaluate
from rtrec.training.index import build_index
from rtrec.training.loss import multinomial_loss, sampled_softmax_loss
from rtrec.training.trainer import BAG_HISTORY, PRIOR_GRID, TrainConfig, candidates, fit, fit_best

from tests.unit.training.test_model import clustered_frame


def random_split(frame: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    held = np.random.default_rng(seed).random(len(frame)) < 0.25
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)


@pytest.fixture(scope="module")
def split() -> tuple[pd.DataFrame, pd.DataFrame]:
    return random_split(clustered_frame())


def small_published(**overrides: object) -> TrainConfig:
    return TrainConfig.published(**{"epochs": 15, "dim": 16, "select_best": False, **overrides})


@pytest.fixture(scope="module")
def model(split):
    return fit(split[0], small_published(), progress=False)


def test_multinomial_loss_counts_each_positive_once() -> None:
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    pos = torch.zeros(3, 5)
    pos[0, 0] = pos[1, 1] = pos[2, 2] = 1.0
    # One positive a row over the same candidates: the single-positive softmax.
    one = multinomial_loss(u, v, pos, torch.tensor(5.0))
    logp = torch.log_softmax(u @ v.T * 5.0, 1)
    assert one.item() == pytest.approx(-(logp[0, 0] + logp[1, 1] + logp[2, 2]).item() / 3)
    pos[0, 3] = 1.0
    two = multinomial_loss(u, v, pos, torch.tensor(5.0))
    assert two.item() == pytest.approx(-(logp[[0, 0, 1, 2], [0, 3, 1, 2]]).sum().item() / 4)
    # A uniform negative that is a row's positive is masked, not a negative.
    extra = v[3:4]
    hits = torch.tensor([[True], [False], [False]])
    masked = multinomial_loss(u, v, pos, torch.tensor(5.0), extra_item_vecs=extra, extra_hits=hits)
    unmasked = multinomial_loss(u, v, pos, torch.tensor(5.0), extra_item_vecs=extra)
    assert masked.item() < unmasked.item()


def test_uniform_negative_equal_to_the_positive_is_masked() -> None:
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(4, 4), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(4, 4), dim=-1)
    ids = torch.arange(4)
    args = (u, v, ids, torch.tensor(5.0))
    with_hits = sampled_softmax_loss(*args, extra_item_vecs=v, extra_item_ids=ids)
    without = sampled_softmax_loss(*args, extra_item_vecs=v)
    assert with_hits.item() < without.item()


def test_multinomial_model_beats_most_popular(model, split) -> None:
    train, test = split
    ours = evaluate(model, train, test)
    pop = evaluate(MostPopular(train), train, test)
    assert ours["recall@10"] > 1.5 * pop["recall@10"], (ours, pop)
    assert model.encoders.dense == [] and model.net.cfg.n_dense == 0


@pytest.mark.parametrize("negatives", [0, 16])
def test_multinomial_with_sampled_negatives_trains(split, negatives: int) -> None:
    train, test = split
    cfg = small_published(uniform_negatives=negatives, epochs=5, stream_features=True)
    m = fit(train, cfg, progress=False)
    assert np.isfinite(m.history[-1]["loss"])
    pop = evaluate(MostPopular(train), train, test)
    assert evaluate(m, train, test)["recall@10"] > pop["recall@10"]


def test_next_item_with_the_whole_catalog_as_negatives(split) -> None:
    cfg = TrainConfig(epochs=2, dim=16, history_len=10, uniform_negatives=-1, select_best=False)
    m = fit(split[0], cfg, progress=False)
    assert np.isfinite(m.history[-1]["loss"])


def test_multinomial_is_deterministic_and_stops_early(split) -> None:
    train, val = split
    cfg = small_published(epochs=6, seed=3)
    a = fit(train, cfg, progress=False).item_embeddings()
    b = fit(train, cfg, progress=False).item_embeddings()
    np.testing.assert_array_equal(a, b)
    stopped = fit(
        train,
        small_published(epochs=40, eval_every=1, patience=2, select_best=True, lr=0.5),
        validation=val,
        progress=False,
    )
    assert len(stopped.history) < 40
    assert all("val_ndcg@10" in h for h in stopped.history)


def test_bundle_without_stream_features_serves(tmp_path: Path, model, split) -> None:
    path = save_bundle(tmp_path / "b", model=model, index=build_index(model.item_keys()))
    bundle = load_bundle(path)
    assert bundle.dense_names == []
    users, hist = ["u1", "nobody"], [["i1", "i2"], ["i3"]]
    vecs = bundle.user_vectors(users, hist, [{"cnt_view_1h": 3.0}, {}])
    assert vecs.shape == (2, 17)  # the user vector and the popularity prior's weight
    np.testing.assert_allclose(np.linalg.norm(vecs[:, :16], axis=1), 1.0, atol=1e-5)
    # The id is never used: the same history gives the same vector for any user.
    same = bundle.user_vectors(["u1", "u2"], [["i1"], ["i1"]])
    np.testing.assert_allclose(same[0], same[1], atol=1e-6)
    train, test = split
    direct = evaluate(model, train, test)["ndcg@10"]
    assert evaluate(bundle, train, test)["ndcg@10"] == pytest.approx(direct, abs=1e-4)


def test_popularity_prior_is_tuned_on_validation_and_served_exactly(tmp_path: Path, split) -> None:
    train, test = split
    fit_part, val = random_split(train, seed=1)
    tuned = fit(fit_part, small_published(), validation=val, progress=False)
    assert set(tuned.prior_scores) == set(PRIOR_GRID)
    chosen = float(tuned.net.pop_prior)
    assert tuned.prior_scores[chosen] == max(tuned.prior_scores.values())
    # A fixed weight is used as given: the model's score is T * cos + w * log(1 + count).
    model = fit(train, small_published(popularity_prior=0.4), progress=False)
    users = sorted(test["user_id"].unique())[:5]
    state = model.encoders.user_state(train, users)
    plain = model.user_vectors(*state)[:, :16] @ model.item_embeddings().T
    counts = train["item_id"].value_counts().reindex(model.item_ids).fillna(0).to_numpy()
    expected = model.net.inv_temperature.item() * plain + 0.4 * np.log1p(counts)
    got = model.score(train, users) * model.net.inv_temperature.item()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # The bundle's one FAISS search ranks exactly as the model scores.
    path = save_bundle(tmp_path / "b", model=model, index=build_index(model.item_keys()))
    bundle = load_bundle(path)
    queries = bundle.user_vectors(users, [[] for _ in users])
    _, ids = bundle.search(queries, 10)
    best = np.argsort(-(queries @ bundle.item_keys.T), axis=1, kind="stable")[:, :10]
    assert [row[:5] for row in ids] == [[bundle.item_ids[j] for j in r[:5]] for r in best]
    assert evaluate(bundle, train, test)["ndcg@10"] == pytest.approx(
        evaluate(model, train, test)["ndcg@10"], abs=1e-4
    )


def test_fit_best_keeps_the_candidate_validation_prefers(split) -> None:
    train, test = random_split(split[0], seed=1)
    weak = TrainConfig(epochs=1, dim=8, history_len=10, select_best=False, lr=1e-5)
    strong = small_published(epochs=10)
    for order in (("weak", "strong"), ("strong", "weak")):
        configs = {name: {"weak": weak, "strong": strong}[name] for name in order}
        name, model, scores = fit_best(train, configs, validation=test, progress=False)
        assert set(scores) == {"weak", "strong"}
        assert name == "strong" and scores["strong"] > scores["weak"], scores
        assert model.config == strong
        assert evaluate(model, train, test)["ndcg@10"] == pytest.approx(scores["strong"])
    # Without a validation frame nothing can be compared: the first is fitted alone.
    name, model, scores = fit_best(train, {"weak": weak, "strong": strong}, validation=None)
    assert (name, model.config, scores) == ("weak", weak, {})


def test_candidates_cover_both_objectives_and_fit_the_online_history() -> None:
    from rtrec.features.definitions import RECENT_ITEMS

    for protocol in ("temporal", "random"):
        configs = candidates(protocol, seed=3, max_epochs=2)
        assert {c.objective for c in configs.values()} == {"next_item", "multinomial"}
        assert all(c.seed == 3 and c.epochs == 2 for c in configs.values())
    # A cap above a preset's own count leaves it: each keeps its schedule.
    capped = candidates("temporal", max_epochs=15)
    assert capped["next_item"].epochs == TrainConfig().epochs == 10
    assert capped["user_bag"].epochs == 15 < TrainConfig.user_bag().epochs
    temporal = candidates("temporal")
    # Serving feeds the tower the online recent_items: they must reach what training read.
    assert all(c.history_len <= RECENT_ITEMS for c in temporal.values())
    assert temporal["user_bag"].history_len == BAG_HISTORY == RECENT_ITEMS
    assert candidates("random")["user_bag"] == TrainConfig.published()
