"""The numpy user tower answers what the torch module answers, for every configuration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rtrec.training.fast_tower import FastUserTower, erf
from rtrec.training.model import TwoTower, TwoTowerConfig


def test_erf_matches_the_math_library_to_float32_precision() -> None:
    x = np.linspace(-7.0, 7.0, 20_001, dtype=np.float32)
    ref = np.array([math.erf(float(v)) for v in x])
    assert np.abs(erf(x) - ref).max() < 1e-7
    assert erf(np.array([0.0], np.float32))[0] == 0.0


@pytest.mark.parametrize(
    ("n_dense", "position_weights", "user_id_dropout", "prior"),
    [(5, True, 0.1, 0.3), (0, True, 0.1, 0.0), (3, False, 1.0, 0.7), (4, True, 1.0, 0.0)],
)
def test_fast_tower_equals_the_module_in_eval_mode(
    n_dense: int, position_weights: bool, user_id_dropout: float, prior: float
) -> None:
    torch.manual_seed(3)
    cfg = TwoTowerConfig(
        n_users=50,
        n_items=200,
        n_categories=7,
        n_dense=n_dense,
        history_len=12,
        position_weights=position_weights,
        user_id_dropout=user_id_dropout,
    )
    net = TwoTower(cfg)
    with torch.no_grad():  # trained-looking weights: not the init's zeros and ones
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        net.pop_prior.fill_(prior)
        net.log_pop_scale.fill_(2.5)
    net.eval()
    rng = np.random.default_rng(0)
    users = rng.integers(0, cfg.n_users, size=6)
    history = rng.integers(0, cfg.n_items, size=(6, cfg.history_len))
    history[0] = 0  # no history at all
    history[1, 3:] = 0  # a short one
    dense = rng.normal(size=(6, n_dense)).astype(np.float32) * 3
    with torch.inference_mode():
        want = net.query(
            net.user_tower(torch.as_tensor(users), torch.as_tensor(history), torch.as_tensor(dense))
        ).numpy()
    got = FastUserTower(net)(users, history, dense)
    assert got.dtype == np.float32 and got.shape == want.shape == (6, cfg.dim + 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_fast_tower_refuses_a_module_in_training_mode() -> None:
    net = TwoTower(TwoTowerConfig(n_users=3, n_items=3, n_categories=2, n_dense=0))
    with pytest.raises(ValueError, match="eval"):
        FastUserTower(net.train())
