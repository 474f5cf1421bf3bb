"""In-process figures of the serving benchmark: bare retrieval and GPU search.

Bare retrieval is the service's own recommendation path (:class:`rtrec.serving.Engine`,
the code ``/recommend`` runs) with the user's online features already in hand: user
tower, FAISS search with the service's over-fetch and widening, filters, top-up and
fallbacks, on the same bundle and the same mix of bodies, one request at a time on one
torch thread. What it leaves out is what the service adds on top: HTTP, the framework,
the online-store read and JSON.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def bare_engine(bundle: Any, work_dir: Path) -> Any:
    """An :class:`Engine` serving ``bundle`` as the champion, reading no store."""
    from rtrec.serving import Engine
    from rtrec.serving.lifecycle import Loaded

    from rtrec.config import load_settings

    engine = Engine(load_settings(work_dir=work_dir), features=lambda ids: [{} for _ in ids])
    engine.swap("champion", Loaded(bundle, getattr(bundle, "version", None), "bench"))
    return engine


def online_row(history: Sequence[str]) -> dict[str, Any]:
    """The online-feature row the bench seeds for a user (counts aside: missing here)."""
    return {"recent_items": list(history)} if history else {"recent_items": None}


def bare_retrieval(
    bundle: Any,
    bodies: Sequence[tuple[str, dict[str, Any]]],
    histories: Mapping[str, Sequence[str]],
    *,
    work_dir: Path,
    n: int = 3000,
    warmup: int = 200,
) -> dict[str, float]:
    """p50/p99 (ms) of the engine's answer to the first ``n`` of ``bodies`` (the mix's
    /recommend bodies that reach retrieval, :func:`bench.serving_mix.bare_plan`; cycled),
    the first ``warmup`` left out."""
    import torch
    from rtrec.serving.schemas import RecommendRequest

    torch.set_num_threads(1)
    engine = bare_engine(bundle, work_dir)
    recommend = [body for _, body in bodies]
    times = []
    for j in range(n + warmup):
        body = recommend[j % len(recommend)]
        req = RecommendRequest(**body)
        row = online_row(histories.get(body["user_id"], ()))
        t = time.perf_counter()
        engine.recommend(req, features=row)
        times.append(time.perf_counter() - t)
    arr = np.asarray(times[warmup:]) * 1000
    return {
        "bare_p50_ms": float(np.percentile(arr, 50)),
        "bare_p99_ms": float(np.percentile(arr, 99)),
        "bare_requests": len(arr),
    }


def retrieval_device(gpus: int) -> str:
    """Where the GPU figure can be measured: only where faiss itself reports a GPU."""
    return "gpu" if gpus > 0 else "cpu"


def gpu_retrieval_p99_ms(embeddings: np.ndarray, *, gpus: int, k: int = 100) -> float | None:
    """p99 of single-query IVF search on GPU 0; None (not measured) without a GPU."""
    if retrieval_device(gpus) != "gpu":
        return None
    from rtrec.training.index import build_index

    index = build_index(embeddings, kind="ivf", use_gpu=True, k=k)
    rng = np.random.default_rng(1)
    queries = embeddings[rng.choice(len(embeddings), 2000)]
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - t)
    return float(np.percentile(np.asarray(times[100:]) * 1000, 99))


def gpu_figures(embeddings: np.ndarray, *, dim: int, large_items: int) -> dict[str, Any]:
    """GPU search over the bundle's items and over ``large_items`` clustered vectors,
    where faiss reports a GPU; None figures (not measured) elsewhere."""
    from rtrec.training.index import gpu_count

    gpus = gpu_count()
    out: dict[str, Any] = {
        "gpu_retrieval_p99_ms": gpu_retrieval_p99_ms(embeddings, gpus=gpus),
        "gpu_retrieval_large_items": None,
        "gpu_retrieval_large_p99_ms": None,
    }
    if retrieval_device(gpus) == "gpu" and large_items:
        from rtrec.serving.synthetic import clustered_vectors

        print(f"GPU retrieval over {large_items} items...", flush=True)
        large = clustered_vectors(large_items, dim, seed=5)
        out["gpu_retrieval_large_p99_ms"] = gpu_retrieval_p99_ms(large, gpus=gpus)
        out["gpu_retrieval_large_items"] = large_items
    return out
