"""In-process figures of the serving benchmark: bare retrieval and GPU search.

Bare retrieval is what the service's recommendation path costs without HTTP, the online
store or the framework: user tower, FAISS search with the service's over-fetch (history
length + 20 when ``exclude_seen``; at least 20 k under a category filter, widened four-fold
until k items pass), and the filters, one request at a time on one torch thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def retrieve(bundle: Any, body: Mapping[str, Any], history: Sequence[str]) -> list[str]:
    """The service's retrieval for one /recommend body, without features or HTTP."""
    k = min(int(body["k"]), len(bundle.item_ids))
    zeros = np.zeros((1, len(bundle.dense_names)), np.float32)
    vec = bundle.user_vectors([body["user_id"]], [list(history)], zeros)
    banned = set(history) if body.get("exclude_seen", True) else set()
    include = set((body.get("filters") or {}).get("include_categories") or ())
    n_items = len(bundle.item_ids)
    fetch = min(n_items, k + len(banned) + 20)
    if include:
        fetch = min(n_items, max(fetch, k * 20))
    while True:
        _, ids = bundle.search(vec, fetch)
        picked = []
        for item in ids[0]:
            if item is None or item in banned:
                continue
            if include and not include.intersection(bundle.item_categories.get(item, ())):
                continue
            picked.append(item)
            if len(picked) == k:
                break
        if len(picked) >= k or fetch >= n_items:
            return picked
        fetch = min(n_items, fetch * 4)


def bare_retrieval(
    bundle: Any,
    bodies: Sequence[tuple[str, dict[str, Any]]],
    histories: Mapping[str, Sequence[str]],
    *,
    n: int = 3000,
    warmup: int = 200,
) -> dict[str, float]:
    """p50/p99 (ms) of :func:`retrieve` over the first ``n`` of the mix's bodies (cycled),
    the first ``warmup`` left out."""
    import torch

    torch.set_num_threads(1)
    times = []
    for j in range(n + warmup):
        _, body = bodies[j % len(bodies)]
        history = histories.get(body["user_id"], ())
        t = time.perf_counter()
        retrieve(bundle, body, history)
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
