"""Synthetic model bundles for tests and the serving benchmark.

An untrained two-tower network over a generated catalog (``i0``..``iN``, each item in one
or two of ``c0``..``cC``), saved through :func:`rtrec.training.artifacts.save_bundle` so the
service loads it exactly like a trained one. Random weights still make the user vector
depend on the user's recent items, which is what the serving tests need: a click changes
the history, so it changes the recommendations.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def dense_feature_names() -> list[str]:
    """The user tower's dense inputs, in the order the training sets produce them."""
    from rtrec.features import count_names

    return [*sorted(count_names()), "secs_since_prev"]


def synthetic_bundle(
    directory: Path | str,
    *,
    n_items: int = 500,
    n_users: int = 50,
    n_categories: int = 8,
    dim: int = 64,
    hidden: int = 128,
    history_len: int = 20,
    seed: int = 0,
    index_kind: str = "auto",
    version_tag: str | None = None,
    clustered: bool | None = None,
) -> Path:
    """Write a loadable bundle for ``n_items`` items to ``directory`` and return it.

    ``seed`` changes the weights (two seeds give two different models, for swap tests);
    ``version_tag`` is stored in the metadata so a test can tell bundles apart.
    ``clustered`` (default: above 50,000 items) stores clustered item vectors instead of
    the untrained item tower's near-isotropic ones: real embeddings cluster, and an IVF
    index over isotropic vectors needs every list probed to reach its recall target,
    which would benchmark brute force rather than the index the service really runs.
    """
    from rtrec.training import InputEncoder, TrainConfig, TrainedModel, Vocab

    rng = np.random.default_rng(seed)
    clustered = n_items > 50_000 if clustered is None else clustered
    items = Vocab([f"i{j}" for j in range(n_items)])
    users = Vocab([f"u{j}" for j in range(n_users)])
    categories = Vocab([f"c{j}" for j in range(n_categories)])
    table = _category_table(rng, items.size, n_categories)
    dense = dense_feature_names()
    encoders = InputEncoder(users, items, categories, dense, history_len, table)
    net = _network(encoders, dim=dim, hidden=hidden, seed=seed)
    model = TrainedModel(net, encoders, TrainConfig(dim=dim, hidden=hidden, seed=seed))
    embeddings = _clustered(rng, n_items, dim) if clustered else _item_embeddings(net, table)
    model.item_embeddings = lambda: embeddings  # type: ignore[method-assign]
    return _save(Path(directory), model, rng, seed=seed, index_kind=index_kind, tag=version_tag)


def _category_table(rng: np.random.Generator, size: int, n_categories: int) -> np.ndarray:
    """Each item's categories (row 0: padding): a primary one, and a second for ~30%."""
    n_items = size - 1
    table = np.zeros((size, 4), dtype=np.int64)
    table[1:, 0] = rng.integers(1, n_categories + 1, n_items)
    second = rng.random(n_items) < 0.3
    table[1:, 1] = np.where(second, rng.integers(1, n_categories + 1, n_items), 0)
    return table


def _network(encoders: Any, *, dim: int, hidden: int, seed: int) -> Any:
    """The untrained two-tower network, its embeddings drawn wider than training's init
    so that a user's history moves the user vector."""
    import torch
    from rtrec.training import TwoTower, TwoTowerConfig

    torch.manual_seed(seed)
    net = TwoTower(
        TwoTowerConfig(
            n_users=encoders.users.size,
            n_items=encoders.items.size,
            n_categories=encoders.categories.size,
            n_dense=len(encoders.dense),
            dim=dim,
            hidden=hidden,
            history_len=encoders.history_len,
            max_item_categories=encoders.item_categories.shape[1],
        )
    ).eval()
    with torch.no_grad():
        for emb, std in ((net.user_emb, 0.3), (net.hist_emb, 1.0), (net.item_emb, 1.0)):
            emb.weight.normal_(0.0, std)
            emb.weight[0].zero_()
    return net


def _save(
    directory: Path,
    model: Any,
    rng: np.random.Generator,
    *,
    seed: int,
    index_kind: str,
    tag: str | None,
) -> Path:
    """Index the items, pick a random popular list, and save the bundle."""
    from rtrec.training import build_index, save_bundle

    items = model.encoders.items
    n_items = items.size - 1
    keys = model.item_keys()  # no popularity prior: its column is zeros
    index = build_index(keys, kind=index_kind, use_gpu=False, k=100, seed=seed)  # type: ignore[arg-type]
    popular = [items.ids[j] for j in rng.permutation(n_items)[: min(n_items, 500)]]
    extra: dict[str, Any] = {"synthetic": True}
    if tag is not None:
        extra["version_tag"] = tag
    out = save_bundle(directory, model=model, index=index, popular_items=popular, extra=extra)
    logger.info("synthetic bundle written", extra={"items": n_items, "path": str(out)})
    return out


def _item_embeddings(net: Any, table: np.ndarray, *, chunk: int = 65_536) -> np.ndarray:
    """Item tower over the whole catalog in chunks (bounded memory for 1M items)."""
    import torch

    n = table.shape[0] - 1
    out = np.empty((n, net.cfg.dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n, chunk):
            idx = torch.arange(start + 1, min(n, start + chunk) + 1)
            out[start : start + len(idx)] = net.item_tower(idx, torch.as_tensor(table[idx])).numpy()
    return out


def clustered_vectors(n: int, dim: int, *, seed: int = 0) -> np.ndarray:
    """``n`` clustered unit vectors (an item catalog's shape without a model), e.g. the
    10M-item GPU retrieval figure."""
    return _clustered(np.random.default_rng(seed), n, dim)


def _clustered(rng: np.random.Generator, n: int, dim: int, *, clusters: int = 1024) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (noise 0.35 per dimension)."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 262_144):
        m = min(n, start + 262_144) - start
        block = centres[rng.integers(0, clusters, m)]
        block += 0.35 * rng.standard_normal((m, dim)).astype(np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out
