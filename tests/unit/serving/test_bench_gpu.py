"""bench/serving.py picks the GPU measurement only where faiss reports a GPU (the figures
themselves are in bench/serving_bare.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "serving_bare.py"


@pytest.fixture(scope="module")
def bench():
    """``bench/serving.py``'s GPU figures live in ``serving_bare``, which imports without
    the service packages (BentoML), as the GPU machine requires."""
    spec = importlib.util.spec_from_file_location("bench_serving_bare", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_selection(bench) -> None:
    assert bench.retrieval_device(0) == "cpu"
    assert bench.retrieval_device(1) == "gpu" and bench.retrieval_device(8) == "gpu"


def test_no_gpu_means_not_measured(bench) -> None:
    emb = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
    assert bench.gpu_retrieval_p99_ms(emb, gpus=0) is None


def test_gpu_branch_selected_when_gpus_reported(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    import rtrec.training.index as index

    calls = {}
    real_build = index.build_index

    def fake_build(embeddings, **kw):
        calls.update(kw)
        return real_build(embeddings, kind="flat", use_gpu=False)

    monkeypatch.setattr(index, "build_index", fake_build)
    emb = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    p99 = bench.gpu_retrieval_p99_ms(emb, gpus=1, k=10)
    assert calls["use_gpu"] is True and calls["kind"] == "ivf"
    assert p99 is not None and p99 > 0


@pytest.mark.gpu
def test_gpu_retrieval_is_measured_on_a_gpu(bench) -> None:
    from rtrec.training.index import gpu_count

    emb = np.random.default_rng(0).standard_normal((100_000, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    p99 = bench.gpu_retrieval_p99_ms(emb, gpus=gpu_count())
    assert p99 is not None and p99 < 5.0


def test_clustered_vectors_for_the_large_gpu_figure() -> None:
    from rtrec.serving.synthetic import clustered_vectors

    a = clustered_vectors(5000, 32, seed=3)
    assert a.shape == (5000, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a, clustered_vectors(5000, 32, seed=3))
    # Clustered, not isotropic: each vector has a much closer neighbour than chance.
    sims = a[:200] @ a.T
    np.fill_diagonal(sims[:, :200], -1)
    assert np.median(sims.max(axis=1)) > 0.5
