"""What a GPU buys: training throughput and FAISS retrieval, each beside the CPU in the
same process.

    python bench/gpu.py [--data PATH/TO/ml-100k] [--index-items 1000000,10000000]
        [--batches 8192,16384,32768]

- ``cpu_examples_per_s`` / ``gpu_examples_per_s``: optimizer steps of the two-tower
  model (100k users and items, batch 8192, AdamW, bf16 autocast on the GPU) on synthetic
  tensors, as ``bench/training.py`` times them; ``gpu_examples_per_s_by_batch`` the same
  at larger batches (the GPU is far from full at 8192);
- ``ml100k_epoch_s_cpu`` / ``ml100k_epoch_s_gpu``: one epoch of ``rtrec.training.fit``
  (the product's trainer, its default settings) over ML-100K with ``--data``, end to end
  (vocabularies, tensors, the epoch, the item embeddings);
- ``index_<n>m_*``: the product's index (``rtrec.training.build_index``: IVF whose
  nprobe is raised until recall@100 >= 0.95 on a sample) over each of ``--index-items``
  clustered 64-d vectors (e.g. ``1000000,10000000``), built on GPU 0 where faiss reports
  one (``built_on``), then the same index searched on the CPU and on the GPU:
  single-query latency p50/p99, a batch of 1,024 queries per query, and recall@100
  against exact search on 1,024 held-out noisy queries.

Nothing here needs the service packages: the GPU machine has PyTorch and NumPy. Without
CUDA or faiss-gpu the GPU figures are null (not measured), never a CPU figure renamed.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.training import examples_per_s


def ml100k_epoch_s(path: str, device: str) -> float:
    from rtrec.training.examples import histories_within
    from rtrec.training.trainer import TrainConfig, fit

    from rtrec.data import load_dataset

    ds = load_dataset(path)
    frame = histories_within(ds.events.assign(item_categories=None), 20)
    t = time.perf_counter()
    model = fit(frame, TrainConfig(epochs=1, select_best=False, device=device), progress=False)
    seconds = time.perf_counter() - t
    assert model.item_embeddings().shape[0] > 0
    return seconds


def _latencies_ms(search: Any, queries: np.ndarray, k: int) -> np.ndarray:
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q[None, :], k)
        times.append(time.perf_counter() - t)
    return np.asarray(times[50:]) * 1000  # the first calls warm caches and kernels


def index_figures(n: int, *, dim: int = 64, k: int = 100) -> dict[str, Any]:
    """The product's index over ``n`` clustered vectors: built on the GPU where faiss
    reports one (else on the CPU), then the same index searched on both."""
    import faiss
    from rtrec.serving.synthetic import clustered_vectors
    from rtrec.training.index import ItemIndex, build_index, exact_top_k, gpu_count, index_recall

    emb = clustered_vectors(n, dim, seed=5)
    rng = np.random.default_rng(1)
    noise = 0.1 * rng.standard_normal((1024, dim)).astype(np.float32)
    queries = emb[rng.choice(n, 1024, replace=n < 1024)] + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gpus = gpu_count()
    t = time.perf_counter()
    built = build_index(emb, use_gpu=gpus > 0, k=k)
    p = f"index_{n // 1_000_000}m_" if n >= 1_000_000 else f"index_{n}_"
    out: dict[str, Any] = {
        p + "kind": built.kind,
        p + "nprobe": built.nprobe,
        p + "built_on": "gpu" if built.on_gpu else "cpu",
        p + "build_s": round(time.perf_counter() - t, 1),
    }
    cpu = built
    if built.on_gpu:
        cpu = ItemIndex(faiss.index_gpu_to_cpu(built.index), built.kind, dim, built.nprobe)
    truth = exact_top_k(emb, queries, k)
    for where, index in (("cpu", cpu), ("gpu", built if built.on_gpu else None)):
        if index is None:
            out[p + "gpu_query_p99_ms"] = None  # not measured: faiss reports no GPU
            continue
        ms = _latencies_ms(index.search, queries[:600], k)
        out[p + f"{where}_query_p50_ms"] = round(float(np.percentile(ms, 50)), 3)
        out[p + f"{where}_query_p99_ms"] = round(float(np.percentile(ms, 99)), 3)
        out[p + f"{where}_recall@100"] = round(index_recall(index, emb, queries, k, truth=truth), 4)
        index.search(queries, k)
        t = time.perf_counter()
        index.search(queries, k)
        out[p + f"{where}_batch1024_us_per_query"] = round(
            (time.perf_counter() - t) / len(queries) * 1e6, 2
        )
    return out


def training_figures(batches: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"cpu_threads": torch.get_num_threads()}
    out["cpu_examples_per_s"] = round(examples_per_s("cpu", steps=5))
    if not torch.cuda.is_available():
        return out | {"gpu_examples_per_s": None, "gpu_examples_per_s_by_batch": None}
    out["gpu_name"] = torch.cuda.get_device_name(0)
    out["gpu_examples_per_s"] = round(examples_per_s("cuda", steps=50))
    out["gpu_examples_per_s_by_batch"] = {
        str(b): round(examples_per_s("cuda", batch=b, steps=30)) for b in batches
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=None, help="ML-100K directory for the epoch times")
    ap.add_argument("--index-items", default="1000000", help="comma-separated catalog sizes")
    ap.add_argument("--batches", default="8192,16384,32768")
    args = ap.parse_args()
    out: dict[str, Any] = {"torch": torch.__version__}
    out |= training_figures([int(b) for b in args.batches.split(",")])
    print(json.dumps(out), flush=True)
    if args.data:
        out["ml100k_epoch_s_cpu"] = round(ml100k_epoch_s(args.data, "cpu"), 2)
        out["ml100k_epoch_s_gpu"] = (
            round(ml100k_epoch_s(args.data, "cuda"), 2) if torch.cuda.is_available() else None
        )
        print(json.dumps(out), flush=True)
    for n in (int(x) for x in args.index_items.split(",") if int(x) > 0):
        out |= index_figures(n)
        print(json.dumps(out), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
