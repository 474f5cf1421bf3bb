"""FAISS index over item embeddings, its type chosen by catalog size.

Exact inner product (``IndexFlatIP``) for small catalogs; IVF for large ones, with
``nprobe`` raised until recall@k against exact search on the real embeddings reaches the
target. On a host where faiss reports GPUs (faiss-gpu), the index moves to GPU 0.
faiss is imported lazily so the module imports anywhere.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

Kind = Literal["auto", "flat", "ivf", "hnsw"]
EXACT_MAX_ITEMS = 50_000
"""Up to this many items exact search is cheap enough (about 1 ms per query)."""
GPU_MAX_NPROBE = 2048


def choose_kind(n_items: int, *, exact_max: int = EXACT_MAX_ITEMS) -> str:
    return "flat" if n_items <= exact_max else "ivf"


def gpu_count() -> int:
    try:
        import faiss

        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        return 0


def want_gpu(use_gpu: bool | Literal["auto"], *, gpus: int | None = None) -> bool:
    """auto: only where faiss itself reports a GPU; True without one is an error."""
    gpus = gpu_count() if gpus is None else gpus
    if use_gpu == "auto":
        return gpus > 0
    if use_gpu and gpus == 0:
        from rtrec.errors import Unavailable

        raise Unavailable("a GPU index was requested but faiss reports no GPU (install faiss-gpu)")
    return bool(use_gpu)


@dataclass
class ItemIndex:
    """A FAISS index plus what it was built as; ``search`` returns row numbers (-1 = none)."""

    index: Any
    kind: str
    dim: int
    nprobe: int | None = None
    on_gpu: bool = False
    recall: float | None = None
    """recall@k vs exact search measured at build time, on the tuning queries (1.0 for
    exact)."""
    measured: dict[str, Any] | None = None
    """recall@k of this very index vs exact search of the same keys, on queries that did
    not tune it (:func:`measure_recall`), with what the queries were."""

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(q, min(k, self.ntotal))

    def save(self, path: Path, meta_path: Path) -> None:
        """The FAISS index at ``path``, what it was built as at ``meta_path`` (the bundle
        names both, ``rtrec.training.artifacts``)."""
        import faiss

        cpu = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        faiss.write_index(cpu, str(path))
        meta_path.write_text(
            json.dumps(
                {
                    "kind": self.kind,
                    "dim": self.dim,
                    "nprobe": self.nprobe,
                    "recall": self.recall,
                    "measured": self.measured,
                }
            )
        )

    @classmethod
    def load(
        cls, path: Path, meta_path: Path, *, use_gpu: bool | Literal["auto"] = "auto"
    ) -> ItemIndex:
        import faiss

        meta = json.loads(meta_path.read_text())
        index = faiss.read_index(str(path))
        if meta.get("nprobe"):
            faiss.extract_index_ivf(index).nprobe = int(meta["nprobe"])
        out = cls(
            index,
            meta["kind"],
            int(meta["dim"]),
            meta.get("nprobe"),
            False,
            meta.get("recall"),
            meta.get("measured"),
        )
        return out.to_gpu() if want_gpu(use_gpu) else out

    def to_gpu(self) -> ItemIndex:
        gpu = _on_gpu0(self.index)
        return ItemIndex(gpu, self.kind, self.dim, self.nprobe, True, self.recall, self.measured)


def _on_gpu0(index: Any) -> Any:
    """``index`` copied to GPU 0, its GPU resources kept alive with it (faiss's own
    ``referenced_objects``: faiss >= 1.12 refuses attributes it does not declare)."""
    import faiss

    res = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(res, 0, index)
    gpu.referenced_objects = [res]
    return gpu


def _exact(embeddings: np.ndarray) -> Any:
    import faiss

    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    return index


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-``k`` per query (the truth recall is measured against)."""
    _, truth = _exact(embeddings).search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return truth


def index_recall(
    index: ItemIndex,
    embeddings: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    truth: np.ndarray | None = None,
) -> float:
    """Mean share of the exact top-k that ``index`` returns, for ``queries`` (``truth``:
    :func:`exact_top_k` computed once when several settings are compared)."""
    if truth is None:
        truth = exact_top_k(embeddings, queries, k)
    _, got = index.search(queries, k)
    hits = sum(len(set(t[t >= 0]) & set(g[g >= 0])) for t, g in zip(truth, got, strict=True))
    return hits / max(int((truth >= 0).sum()), 1)


RECALL_KS = (10, 100)
"""Depths at which the served index's recall is measured: serving's default k and 100."""


def measure_recall(
    index: ItemIndex,
    keys: np.ndarray,
    queries: np.ndarray,
    *,
    ks: tuple[int, ...] = RECALL_KS,
    source: str = "",
) -> dict[str, Any]:
    """``recall@k`` of ``index`` against exact search over the same ``keys`` for each k,
    recorded on the index (``measured``) and returned. ``source`` says what the queries
    are (e.g. the gate slice's users), so the figure says what it measured."""
    n = len(keys)
    out: dict[str, Any] = {"queries": len(queries), "source": source}
    for k in ks:
        out[f"recall@{k}"] = (
            index_recall(index, keys, queries, min(k, n)) if len(queries) else float("nan")
        )
    index.measured = out
    return out


def _trained_ivf(emb: np.ndarray, sample: np.ndarray, nlist: int, *, on_gpu: bool) -> Any:
    """An IVF-flat index over ``emb``, its coarse quantizer trained on ``sample``.

    On a GPU the k-means and the assignment of every item run there: on the CPU they are
    what makes a large catalog slow to index (about ``n * nlist * d`` multiply-adds for the
    assignment alone, minutes at 10M items).
    """
    import faiss

    d = emb.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    if on_gpu:
        index = _on_gpu0(index)
    index.train(sample)
    index.add(emb)
    return index


def build_index(
    embeddings: np.ndarray,
    *,
    kind: Kind = "auto",
    exact_max: int = EXACT_MAX_ITEMS,
    use_gpu: bool | Literal["auto"] = "auto",
    target_recall: float = 0.95,
    k: int = 100,
    queries: np.ndarray | None = None,
    seed: int = 0,
) -> ItemIndex:
    """Build the index for ``embeddings`` (``[n, d]`` float32, L2-normalised).

    IVF's ``nprobe`` is raised until recall@k on ``queries`` reaches ``target_recall``;
    pass the queries the index will serve (user vectors), since item vectors as queries
    land in their own cluster and flatter the index. Default: a sample of the items.
    """
    import faiss

    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = emb.shape
    kind = choose_kind(n, exact_max=exact_max) if kind == "auto" else kind
    rng = np.random.default_rng(seed)
    if queries is None:
        queries = emb[rng.choice(n, size=min(n, 500), replace=False)]
    if kind == "flat":
        out = ItemIndex(_exact(emb), "flat", d, recall=1.0)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(emb)
        index.hnsw.efSearch = 128
        out = ItemIndex(index, "hnsw", d)
    else:
        nlist = int(min(max(16, 4 * math.sqrt(n)), n // 39 or 1))
        sample = emb[rng.choice(n, size=min(n, nlist * 64), replace=False)]
        on_gpu = want_gpu(use_gpu)
        index = _trained_ivf(emb, sample, nlist, on_gpu=on_gpu)
        out = ItemIndex(index, "ivf", d, on_gpu=on_gpu)
        truth = exact_top_k(emb, queries, min(k, n))
        # The smallest nprobe that reaches the target: every list probed costs latency.
        # faiss's GPU kernels probe at most GPU_MAX_NPROBE lists.
        most = min(nlist, GPU_MAX_NPROBE) if on_gpu else nlist
        for nprobe in (1, 2, 4, 8, 16, 32, 64, 128, 256, most):
            index.nprobe = min(nprobe, most)
            out.nprobe = int(index.nprobe)
            out.recall = index_recall(out, emb, queries, min(k, n), truth=truth)
            if out.recall >= target_recall or out.nprobe == most:
                break
    if out.recall is None:
        out.recall = index_recall(out, emb, queries, min(k, n))
    logger.info(
        "index built",
        extra={"kind": out.kind, "items": n, "nprobe": out.nprobe, "recall": out.recall},
    )
    return out.to_gpu() if want_gpu(use_gpu) and not out.on_gpu else out
