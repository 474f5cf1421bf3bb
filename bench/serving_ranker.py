"""In-process figures of the serving benchmark's second stage: the ranker on the same mix.

Per warm request of the mix (users with an online history): the user's state from its
online row, the two-tower's query and index search (not timed here: the retrieval
figures have them), then, timed apart,

- ``sources``: the item-item, category-trending and popularity sources and the merge of
  the four lists into at most 200 candidates;
- ``rank``: ranking those candidates, the stage the latency budget is about: their
  features (numpy over the bundle's per-item tables), the prior and LightGBM's trees on
  one dense matrix, one thread, and the sort;
- ``trees``: the trees' call alone, within ``rank`` (the engine ``served_trees`` chose,
  ``ranker_trees_engine``);

and the whole two-stage request (``two_stage_bare``, the engine's /recommend path as
``bare retrieval`` times it, with the ranker). A bundle that carries a ranker is timed
with its own; any other gets a synthetic one over its catalog (random tables,
``--ranker-trees`` trees of ``--ranker-leaves`` leaves: by default the largest the
product's fit may choose, ``training.ranker_max_trees``), said in ``ranker_model``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.serving_bare import bare_engine, online_row


def ranker_for(bundle: Any, *, trees: int, leaves: int, neighbours: int) -> tuple[Any, str]:
    """(the bundle's ranker, "bundle"), or a synthetic one over its catalog."""
    from rtrec.training import load_ranker, ranker_declared

    if ranker_declared(bundle.metadata) is not None:
        return load_ranker(bundle), "bundle"
    from rtrec.training.served_rank import FEATURES, RankerModel, ServedRanker
    from rtrec.training.served_sources import ServedSources, SourceParams
    from rtrec.training.synthetic_ranker import synthetic_booster, synthetic_tables
    from rtrec.training.two_stage import WEIGHTS

    tables = synthetic_tables(bundle, neighbours=neighbours, seed=3)
    booster = synthetic_booster(trees=trees, leaves=leaves, seed=3)
    model = RankerModel(list(FEATURES), 0.5, True, booster)
    params = SourceParams(200, 200, dict(WEIGHTS), 200, 50, 200)
    return ServedRanker(ServedSources(tables, params), model, bundle.item_keys), "synthetic"


def _percentiles(name: str, seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"{name}_{q}_ms": float(np.percentile(ms, int(q[1:]))) for q in ("p50", "p99")}


def _one(bundle: Any, ranker: Any, user: str, history: Sequence[str], now: int) -> tuple:
    """(sources s, rank s, trees s, candidates) for one user."""
    from rtrec.training import online_state

    state = online_state(user, online_row(history) | {"last_event_ms": now}, 200)
    hist = bundle.encoders.items.encode(state.items) - 1
    vec = bundle.user_vectors([user], [list(state.items)])
    query, search = ranker.search(bundle, hist, vec)
    t0 = time.perf_counter()
    merged = ranker.sources.merge(ranker.sources.answers(hist, search))
    t1 = time.perf_counter()
    cols = ranker.columns(merged, state, hist, query, now)
    x = ranker.matrix(cols, len(merged.pos))
    t2 = time.perf_counter()
    ranked = ranker.predict(x, cols)
    t3 = time.perf_counter()
    np.argsort(-ranked, kind="stable")
    t4 = time.perf_counter()
    return t1 - t0, t4 - t1, t3 - t2, len(merged.pos)


def ranker_stage(
    bundle: Any,
    bodies: Sequence[tuple[str, dict[str, Any]]],
    histories: Mapping[str, Sequence[str]],
    *,
    work_dir: Path,
    trees: int = 100,
    leaves: int = 31,
    neighbours: int = 20,
    n: int = 3000,
    warmup: int = 200,
) -> dict[str, Any]:
    """The figures of the module doc, over the first ``n`` warm bodies (cycled)."""
    import torch
    from rtrec.serving.lifecycle import Loaded
    from rtrec.serving.ranking import RankerStage
    from rtrec.serving.schemas import RecommendRequest

    torch.set_num_threads(1)
    ranker, kind = ranker_for(bundle, trees=trees, leaves=leaves, neighbours=neighbours)
    warm = [b for _, b in bodies if histories.get(b["user_id"])]
    now = int(time.time() * 1000)
    for b in warm[:warmup]:  # first calls allocate
        _one(bundle, ranker, b["user_id"], histories[b["user_id"]], now)
    parts = [
        _one(bundle, ranker, b["user_id"], histories[b["user_id"]], now)
        for b in (warm[j % len(warm)] for j in range(n))
    ]
    engine = bare_engine(bundle, work_dir)
    engine.swap("champion", Loaded(bundle, "bench", "bench", RankerStage(ranker, kind)))
    whole = []
    for j in range(n + warmup):
        body = warm[j % len(warm)]
        row = online_row(histories[body["user_id"]]) | {"last_event_ms": now}
        t = time.perf_counter()
        out = engine.recommend(RecommendRequest(**body), features=row)
        whole.append(time.perf_counter() - t)
        if out["fallback"]:
            raise RuntimeError(f"the two-stage path fell back: {out['fallback_reason']}")
    trees_used = ranker.model.booster.num_trees() if ranker.model.booster is not None else 0
    return {
        "ranker_model": kind,
        "ranker_trees": trees_used,
        "ranker_trees_engine": ranker.trees_engine,
        "ranker_candidates_mean": float(np.mean([p[3] for p in parts])),
        **_percentiles("ranker_sources", [p[0] for p in parts]),
        **_percentiles("ranker_rank", [p[1] for p in parts]),
        **_percentiles("ranker_trees_only", [p[2] for p in parts]),
        **_percentiles("two_stage_bare", whole[warmup:]),
    }
