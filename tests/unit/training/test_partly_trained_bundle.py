"""``bench.experiment_support.partly_trained_bundle``: the undertrained champion of the
experiment benchmark is a loadable bundle whose parameters lie on the straight line from
a fresh initialisation to the trained weights, at the asked progress."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rtrec.serving.synthetic import synthetic_bundle
from rtrec.training.artifacts import load_bundle
from rtrec.training.model import TwoTower

from bench.experiment_support import partly_trained_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_bundle(tmp_path_factory.mktemp("trained"), n_items=300, n_users=40, seed=3)


def test_progress_one_is_the_trained_model(trained: Path, tmp_path: Path) -> None:
    out = load_bundle(partly_trained_bundle(trained, tmp_path / "p1", progress=1.0, seed=0))
    before = load_bundle(trained)
    assert np.allclose(out.item_keys, before.item_keys, atol=1e-6)
    assert out.metadata["partly_trained"]["progress"] == 1.0


def test_parameters_lie_between_init_and_trained(trained: Path, tmp_path: Path) -> None:
    done = load_bundle(trained)
    before = done.net.state_dict()
    torch.manual_seed(7)  # what partly_trained_bundle draws its initialisation from
    fresh = TwoTower(done.net.cfg).state_dict()
    half = load_bundle(partly_trained_bundle(trained, tmp_path / "half", progress=0.5, seed=7))
    state = half.net.state_dict()
    params = {n for n, _ in half.net.named_parameters()}
    moved = [n for n in params if not torch.equal(before[n], fresh[n])]
    assert moved  # the check below would pass vacuously without a trained parameter
    for name in moved:
        assert torch.allclose(state[name], (fresh[name] + before[name]) / 2, atol=1e-6), name
    for name in set(state) - params:  # buffers (the popularity prior) are kept
        assert torch.equal(state[name], before[name]), name
    # The served keys come from the moved weights, not the trained ones.
    assert not np.allclose(half.item_keys, done.item_keys, atol=1e-3)
