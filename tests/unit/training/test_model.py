"""Two-tower model, trainer, evaluator, baselines, index and bundle on small synthetic data."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rtrec.training.artifacts import (
    ITEM_EMBEDDINGS,
    METADATA,
    PRIOR_BUFFERS,
    WEIGHTS,
    load_bundle,
    save_bundle,
)
from rtrec.training.baselines import EASE, MostPopular, fit_baselines
from rtrec.training.evaluate import evaluate, write_report
from rtrec.training.examples import InputEncoder, histories_within
from rtrec.training.index import build_index, choose_kind, index_recall, want_gpu
from rtrec.training.loss import sampled_softmax_loss
from rtrec.training.model import TwoTower, TwoTowerConfig
from rtrec.training.trainer import TrainConfig, fit, select_device

from rtrec.errors import InvalidInput, NotFound


def clustered_frame(
    n_users: int = 300, n_items: int = 200, per_user: int = 30, seed: int = 0
) -> pd.DataFrame:
    """Users in 5 taste clusters, each cluster reading its own fifth of the catalog."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        c = u % 5
        items = rng.choice(np.arange(c * n_items // 5, (c + 1) * n_items // 5), per_user)
        for t, i in enumerate(items):
            rows.append(
                {
                    "user_id": f"u{u}",
                    "item_id": f"i{i}",
                    "ts": t * 1000,
                    "event_type": "view",
                    "item_categories": [f"c{c}"],
                }
            )
    return histories_within(pd.DataFrame(rows), 10)


def temporal(frame: pd.DataFrame, cut: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    return frame[frame.ts < cut].reset_index(drop=True), frame[frame.ts >= cut].reset_index(
        drop=True
    )


@pytest.fixture(scope="module")
def split():
    return temporal(clustered_frame(), 25_000)


@pytest.fixture(scope="module")
def model(split):
    train, _ = split
    return fit(
        train, TrainConfig(epochs=4, dim=32, history_len=10, select_best=False), progress=False
    )


def test_towers_are_normalised_with_expected_shapes() -> None:
    cfg = TwoTowerConfig(n_users=11, n_items=21, n_categories=4, n_dense=3, dim=16, history_len=5)
    net = TwoTower(cfg).eval()
    u = net.user_tower(
        torch.tensor([1, 0]), torch.tensor([[1, 2, 0, 0, 0], [0] * 5]), torch.zeros(2, 3)
    )
    v = net.item_tower(torch.arange(1, 21), torch.zeros(20, 2, dtype=torch.long))
    assert u.shape == (2, 16) and v.shape == (20, 16)
    assert torch.allclose(u.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(v.norm(dim=-1), torch.ones(20), atol=1e-5)


def test_log_q_correction_changes_the_loss() -> None:
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    ids = torch.arange(8)
    plain = sampled_softmax_loss(u, v, ids, torch.tensor(10.0))
    corrected = sampled_softmax_loss(
        u, v, ids, torch.tensor(10.0), log_q=torch.log(torch.linspace(0.01, 0.5, 8))
    )
    assert plain.item() > 0 and not math.isclose(plain.item(), corrected.item())
    # Accidental hits (the same item twice in a batch) are not negatives.
    dup = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])
    assert sampled_softmax_loss(u, v, dup, torch.tensor(10.0)).item() != plain.item()


def test_training_is_deterministic_under_a_seed(split) -> None:
    train, _ = split
    cfg = TrainConfig(epochs=1, dim=16, history_len=10, select_best=False, seed=7)
    a = fit(train, cfg, progress=False).item_embeddings()
    b = fit(train, cfg, progress=False).item_embeddings()
    np.testing.assert_array_equal(a, b)


def test_model_beats_most_popular(model, split) -> None:
    train, test = split
    ours = evaluate(model, train, test)
    pop = evaluate(MostPopular(train), train, test)
    assert ours["recall@10"] > 1.5 * pop["recall@10"], (ours, pop)
    assert ours["ndcg@10"] > pop["ndcg@10"]


def test_metrics_on_a_hand_computed_case() -> None:
    class Fixed:
        item_ids = ["a", "b", "c", "d"]

        def score(self, seen, users):
            return np.array([[4.0, 3.0, 2.0, 1.0]] * len(users))

    seen = pd.DataFrame({"user_id": ["x"], "item_id": ["a"]})  # 'a' masked
    target = pd.DataFrame({"user_id": ["x", "x"], "item_id": ["c", "z"]})  # z not in catalog
    m = evaluate(Fixed(), seen, target, ks=(10,))
    # ranking b, c, d: one hit at rank 2 of 2 relevant items
    assert m["recall@10"] == pytest.approx(0.5)
    assert m["precision@10"] == pytest.approx(0.1)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["map@10"] == pytest.approx((1 / 2) / 2)


def test_ease_learns_co_occurrence(split) -> None:
    train, test = split
    ease = EASE(train, l2=10.0)
    assert (
        evaluate(ease, train, test)["recall@10"]
        > 2 * evaluate(MostPopular(train), train, test)["recall@10"]
    )
    assert set(fit_baselines(train)) == {"MostPopular", "EASE"}


def test_ease_closed_form_and_tuning_keep_the_validation_best(split) -> None:
    """The Cholesky path gives Steck's closed form; tune() keeps the best grid value's fit."""
    train, test = split
    ease = EASE(train, l2=25.0)
    g = ease._gram.astype(np.float64) + 25.0 * np.eye(len(ease._gram))
    p = np.linalg.inv(g)
    expected = -p / np.diag(p)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(ease._b, expected, rtol=1e-3, atol=1e-6)

    grid = (1.0, 25.0, 400.0)
    scores = {}
    for l2 in grid:
        scores[l2] = evaluate(EASE(train, l2=l2), train, test)["ndcg@10"]
    tuned = EASE(train, l2=None)
    with pytest.raises(RuntimeError, match="not fitted"):
        tuned.score(train, ["u0"])
    assert tuned.tune(train, test, grid) == max(grid, key=scores.__getitem__)
    assert evaluate(tuned, train, test)["ndcg@10"] == pytest.approx(max(scores.values()))


def test_report_files(tmp_path: Path, model, split) -> None:
    train, test = split
    md, png = write_report({"two_tower": evaluate(model, train, test)}, tmp_path / "r", title="t")
    assert "ndcg@10" in md.read_text() and png.stat().st_size > 1000


def test_index_kind_and_recall() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 32))
    emb = (centers[rng.integers(0, 50, 60_000)] + 0.3 * rng.normal(size=(60_000, 32))).astype(
        "float32"
    )
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert choose_kind(1_000) == "flat" and choose_kind(60_000) == "ivf"
    index = build_index(emb, use_gpu=False)
    assert index.kind == "ivf" and index.recall >= 0.95
    assert index_recall(index, emb, emb[:200], 100) >= 0.95


@pytest.mark.gpu
def test_ivf_is_trained_on_the_gpu_and_saved_for_any_host(tmp_path: Path) -> None:
    """Where faiss reports a GPU the IVF index is trained and filled there, reaches the
    recall target, and saves as a CPU index that loads and answers alike on a CPU host."""
    from rtrec.training.index import ItemIndex, gpu_count

    if gpu_count() == 0:
        pytest.skip("faiss reports no GPU (faiss-cpu installed)")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 32))
    emb = (centers[rng.integers(0, 50, 60_000)] + 0.3 * rng.normal(size=(60_000, 32))).astype(
        "float32"
    )
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = build_index(emb, use_gpu=True)
    assert index.on_gpu and index.kind == "ivf" and index.recall >= 0.95
    assert index_recall(index, emb, emb[:200], 100) >= 0.95
    index.save(tmp_path / "items.faiss", tmp_path / "index.json")
    cpu = ItemIndex.load(tmp_path / "items.faiss", tmp_path / "index.json", use_gpu=False)
    assert not cpu.on_gpu and cpu.nprobe == index.nprobe
    on_cpu, on_gpu = cpu.search(emb[:50], 10)[1], index.search(emb[:50], 10)[1]
    same = [len(set(a) & set(b)) / 10 for a, b in zip(on_cpu, on_gpu, strict=True)]
    assert np.mean(same) >= 0.98  # float order of the sums may swap near-ties
    # And as serving loads a bundle's index on a GPU host: moved there, nprobe kept.
    served = ItemIndex.load(tmp_path / "items.faiss", tmp_path / "index.json", use_gpu=True)
    assert served.on_gpu and served.nprobe == index.nprobe
    again = served.search(emb[:50], 10)[1]
    same = [len(set(a) & set(b)) / 10 for a, b in zip(on_cpu, again, strict=True)]
    assert np.mean(same) >= 0.98


def test_gpu_selection_without_gpu() -> None:
    assert want_gpu("auto", gpus=0) is False
    assert want_gpu("auto", gpus=1) is True
    from rtrec.errors import Unavailable

    with pytest.raises(Unavailable, match="faiss reports no GPU"):
        want_gpu(True, gpus=0)
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"
        with pytest.raises(Unavailable):
            select_device("cuda")


@pytest.mark.gpu
def test_trains_on_gpu_with_amp(split) -> None:
    train, _ = split
    m = fit(
        train,
        TrainConfig(epochs=1, dim=16, history_len=10, device="cuda", select_best=False),
        progress=False,
    )
    assert next(m.net.parameters()).is_cuda and m.item_embeddings().shape[1] == 16


def test_bundle_round_trip(tmp_path: Path, model) -> None:
    index = build_index(model.item_keys())
    path = save_bundle(tmp_path / "b", model=model, index=index, popular_items=["i1", "i2"])
    bundle = load_bundle(path)
    users, hist = ["u1", "unknown-user"], [["i1", "i2"], ["i3"]]
    dense = np.zeros((2, len(bundle.dense_names)), np.float32)
    enc: InputEncoder = model.encoders
    direct = model.user_vectors(
        enc.users.encode(users), enc.items.encode_lists(hist, enc.history_len), dense
    )
    np.testing.assert_allclose(bundle.user_vectors(users, hist, dense), direct, atol=1e-6)
    _, ids = bundle.search(direct, 5)
    assert all(i in bundle.item_ids for i in ids[0])
    assert bundle.popular_items == ["i1", "i2"]
    assert bundle.similar_items(bundle.item_ids[0], 3)[0][0] != bundle.item_ids[0]
    with pytest.raises(NotFound):
        bundle.similar_items("nope", 3)


def test_bundle_saved_before_the_popularity_prior_still_loads(tmp_path: Path, model) -> None:
    """A champion registered by an older release keeps serving after an upgrade."""
    path = save_bundle(tmp_path / "b", model=model, index=build_index(model.item_embeddings()))
    state = torch.load(path / WEIGHTS, weights_only=True)
    torch.save({k: v for k, v in state.items() if k not in PRIOR_BUFFERS}, path / WEIGHTS)
    meta = json.loads((path / METADATA).read_text())
    meta["sha256"][WEIGHTS] = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
    (path / METADATA).write_text(json.dumps(meta))
    bundle = load_bundle(path)
    assert float(bundle.net.pop_prior) == 0.0 and bundle.index.dim == model.net.cfg.dim
    users, hist = ["u1", "unknown-user"], [["i1", "i2"], ["i3"]]
    queries = bundle.user_vectors(users, hist)
    _, ids = bundle.search(queries, 5)
    plain = queries[:, :-1] @ bundle.item_embeddings.T
    assert [row[0] for row in ids] == [bundle.item_ids[j] for j in plain.argmax(1)]


@pytest.mark.parametrize("damage", ["delete", "corrupt", "truncate-embeddings"])
def test_broken_bundles_are_refused(tmp_path: Path, model, damage: str) -> None:
    path = save_bundle(tmp_path / "b", model=model, index=build_index(model.item_keys()))
    if damage == "delete":
        (path / WEIGHTS).unlink()
    elif damage == "corrupt":
        (path / "index.faiss").write_bytes(b"garbage")
    else:
        np.save(path / ITEM_EMBEDDINGS, np.zeros((3, 3), np.float32))
        meta = json.loads((path / METADATA).read_text())
        from rtrec.training.artifacts import _sha256

        meta["sha256"][ITEM_EMBEDDINGS] = _sha256(path / ITEM_EMBEDDINGS)
        (path / METADATA).write_text(json.dumps(meta))
    with pytest.raises(InvalidInput):
        load_bundle(path)
    with pytest.raises(NotFound):
        load_bundle(tmp_path / "missing")


def test_user_state_is_each_users_latest_history_newest_first() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["a", "b", "a", "a", "b", "a"],
            "item_id": ["i1", "i2", "i3", "i1", "i4", "i2"],
            "ts": [1, 2, 5, 3, 1, 4],
            "cnt_view_1h": [0, 7, 3, 1, 2, 9],
        }
    )
    enc = InputEncoder.fit(frame, history_len=3)
    ids = lambda *xs: list(enc.items.encode(xs))  # noqa: E731
    users, history, dense = enc.user_state(frame, ["b", "nobody", "a", "b"])
    assert list(users) == list(enc.users.encode(["b", "nobody", "a", "b"]))
    # a: i3 (ts 5), i2 (4), i1 (3) — the oldest, i1 at ts 1, falls off; repeats stay.
    b = [*ids("i2", "i4"), 0]
    assert history.tolist() == [b, [0, 0, 0], ids("i3", "i2", "i1"), b]
    assert dense[:, enc.dense.index("cnt_view_1h")].tolist() == pytest.approx(
        np.log1p([7, 0, 3, 7]).tolist()
    )
    assert enc.user_state(frame, [])[1].shape == (0, 3)
