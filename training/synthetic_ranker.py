"""A second stage for a synthetic bundle (``rtrec.serving.synthetic``): random source tables
over its catalog and a LightGBM lambdarank model fitted on random candidate lists, saved
as a trained bundle's ranker is (``rtrec.training.ranker_bundle``), so tests and the
serving benchmark run the served two-stage path at any catalog size.

The trees are sized like the largest the product's ranker may grow by default (100
rounds, ``training.ranker_max_trees``, of 31 leaves, no early stopping): what a request's
ranking costs depends on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rtrec.training.artifacts import METADATA, ModelBundle
from rtrec.training.served_rank import FEATURES, RankerModel
from rtrec.training.served_sources import SourceParams
from rtrec.training.served_tables import ITEM_FEATURES, ServedTables
from rtrec.training.two_stage import PER_CATEGORY, WEIGHTS

CANDIDATES = 200
HISTORY = 200


def synthetic_tables(bundle: ModelBundle, *, neighbours: int, seed: int) -> ServedTables:
    """Random tables over ``bundle``'s catalog, its own item categories."""
    rng = np.random.default_rng(seed)
    n = len(bundle.item_ids)
    cats = bundle.encoders.item_categories[1:]
    item_cats = [row[row > 0] - 1 for row in cats]
    ptr = np.cumsum([0, *map(len, item_cats)]).astype(np.int64)
    trend = rng.random(n)
    n_cats = len(bundle.encoders.categories)
    flat = np.concatenate(item_cats).astype(np.int32) if n else np.zeros(0, np.int32)
    owner = np.repeat(np.arange(n), np.diff(ptr))
    lists = []
    for c in range(n_cats):
        mine = owner[flat == c]
        lists.append(np.sort(mine[np.argsort(-trend[mine], kind="stable")[:PER_CATEGORY]]))
    pop = rng.pareto(1.5, n)
    w = np.sort(rng.random((n, neighbours)).astype(np.float32), axis=1)[:, ::-1]
    return ServedTables(
        in_catalog=np.ones(n, dtype=bool),
        ii_nbr=rng.integers(0, n, (n, neighbours), dtype=np.int32),
        ii_w=np.ascontiguousarray(w * 0.1),
        trend=trend,
        cat_ptr=np.cumsum([0, *map(len, lists)]).astype(np.int64),
        cat_pos=np.concatenate(lists).astype(np.int32) if lists else np.zeros(0, np.int32),
        item_cat_ptr=ptr,
        item_cats=flat,
        pop_order=np.argsort(-pop, kind="stable").astype(np.int32),
        pop_score=pop,
        item_features=rng.random((n, len(ITEM_FEATURES))),
    )


def synthetic_booster(*, trees: int, leaves: int, seed: int) -> Any:
    """Lambdarank trees on random lists whose labels follow a few of the features."""
    import lightgbm

    rng = np.random.default_rng(seed)
    lists = 200
    x = rng.standard_normal((lists * CANDIDATES, len(FEATURES)))
    signal = x[:, 0] + 0.5 * x[:, 9] - 0.3 * x[:, 20] + rng.standard_normal(len(x))
    label = (signal > 1.5).astype(np.int8)
    params = {"objective": "lambdarank", "num_leaves": leaves, "min_data_in_leaf": 20}
    params |= {"learning_rate": 0.05, "verbosity": -1, "num_threads": 1, "seed": seed}
    data = lightgbm.Dataset(x, label, group=np.full(lists, CANDIDATES))
    return lightgbm.train(params, data, num_boost_round=trees)


def add_synthetic_ranker(
    directory: Path | str,
    *,
    neighbours: int = 100,
    trees: int = 100,
    leaves: int = 31,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a synthetic ranker into the bundle at ``directory`` and declare it in the
    bundle's metadata; returns the declaration."""
    from rtrec.training.artifacts import load_bundle
    from rtrec.training.ranker_bundle import write_ranker

    directory = Path(directory)
    bundle = load_bundle(directory, use_gpu=False)
    tables = synthetic_tables(bundle, neighbours=neighbours, seed=seed)
    model = RankerModel(
        list(FEATURES), 0.5, True, synthetic_booster(trees=trees, leaves=leaves, seed=seed)
    )
    params = SourceParams(CANDIDATES, CANDIDATES, dict(WEIGHTS), HISTORY, 50, HISTORY)
    info = {"synthetic": True, "trees": trees, "leaves": leaves, "neighbours": neighbours}
    declared = write_ranker(directory, tables, model, params, {"num_leaves": leaves}, info)
    meta = json.loads((directory / METADATA).read_text())
    meta["ranker"] = declared
    (directory / METADATA).write_text(json.dumps(meta, default=str))
    return declared
