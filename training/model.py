"""The two-tower retrieval model.

User tower: user id embedding + pooled embeddings of the recent item sequence + dense
stream features. Item tower: item id embedding + pooled category embeddings. Both end
in an MLP and are L2-normalised; a learned temperature scales their dot product. A
popularity prior set after training adds ``w * log(1 + count)`` at ranking; :meth:`query`
and :meth:`keys` fold it into one inner product, so FAISS ranks as the model scores.
Imports only torch, so it runs on a GPU host without the service packages.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


@dataclass(frozen=True)
class TwoTowerConfig:
    n_users: int
    """Rows of the user table (vocabulary + 1 for unknown)."""
    n_items: int
    n_categories: int
    n_dense: int
    dim: int = 64
    hidden: int = 128
    history_len: int = 20
    max_item_categories: int = 4
    dropout: float = 0.1
    init_temperature: float = 0.05
    user_id_dropout: float = 0.1
    """Share of training rows whose user id is hidden, so cold users still get a good
    vector from their history alone; 1 = ids never used (the history alone)."""
    position_weights: bool = True
    """Learned recency weights over history positions; off when the history is a bag
    (the published random split, where order carries no signal)."""

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class TwoTower(nn.Module):
    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.user_emb = nn.Embedding(cfg.n_users, d, padding_idx=0)
        self.item_emb = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.hist_emb = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.cat_emb = nn.Embedding(cfg.n_categories, d, padding_idx=0)
        # Recency weights over history positions (newest first), learned.
        self.pos_weight = nn.Parameter(torch.zeros(cfg.history_len))
        self.dense_norm = nn.LayerNorm(cfg.n_dense) if cfg.n_dense else None
        self.user_mlp = nn.Sequential(
            nn.Linear(2 * d + cfg.n_dense, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, d),
        )
        self.item_mlp = nn.Sequential(
            nn.Linear(2 * d, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, d),
        )
        self.log_inv_temp = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        # Ranking prior (set after training, never trained): score = inv_temp * cos(u, v)
        # + pop_prior * log(1 + count). Retrieval folds it into one extra dimension; the
        # keys hold log(1 + count) / log_pop_scale in [0, 1], so the extra dimension weighs
        # no more than an embedding one in an IVF index's clustering.
        self.register_buffer("item_log_pop", torch.zeros(cfg.n_items))
        self.register_buffer("log_pop_scale", torch.ones(()))
        self.register_buffer("pop_prior", torch.zeros(()))
        for emb in (self.user_emb, self.item_emb, self.hist_emb, self.cat_emb):
            nn.init.normal_(emb.weight, std=0.05)
            with torch.no_grad():
                emb.weight[0].zero_()

    @property
    def inv_temperature(self) -> torch.Tensor:
        return self.log_inv_temp.clamp(max=math.log(100.0)).exp()

    def _pool(
        self, table: nn.Embedding, idx: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Weighted mean of the rows of ``idx`` (0 = padding), without a [B, L, dim] copy."""
        mask = (idx > 0).to(table.weight.dtype)
        if weights is not None:
            mask = mask * weights
        summed = F.embedding_bag(
            idx, table.weight, mode="sum", per_sample_weights=mask.expand_as(idx).contiguous()
        )
        return summed / mask.sum(1, keepdim=True).clamp(min=1e-6)

    def user_tower(
        self, user: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        """``user`` [B], ``history`` [B, L] newest first (0 = padding), ``dense`` [B, F]."""
        if self.cfg.user_id_dropout >= 1:  # ids never seen in training: never used
            user = torch.zeros_like(user)
        elif self.training and self.cfg.user_id_dropout > 0:
            keep = torch.rand(user.shape, device=user.device) >= self.cfg.user_id_dropout
            user = user * keep
        w = None
        if self.cfg.position_weights:
            length = history.shape[1]
            w = (torch.softmax(self.pos_weight[:length], 0) * length).unsqueeze(0)
        parts = [self.user_emb(user), self._pool(self.hist_emb, history, w)]
        if self.dense_norm is not None:
            parts.append(self.dense_norm(dense))
        return F.normalize(self.user_mlp(torch.cat(parts, -1)), dim=-1)

    def item_tower(self, item: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """``item`` [N], ``categories`` [N, C] (0 = padding)."""
        cats = self._pool(self.cat_emb, categories, None)
        return F.normalize(self.item_mlp(torch.cat([self.item_emb(item), cats], -1)), dim=-1)

    def query(self, user_vecs: torch.Tensor) -> torch.Tensor:
        """Retrieval query ``[u, prior * log_pop_scale / inv_temp]`` (``[B, dim + 1]``).

        With :meth:`keys` its inner product is the model's score divided by the
        temperature: the same ranking, in one FAISS search.
        """
        col = (self.pop_prior * self.log_pop_scale / self.inv_temperature).to(user_vecs.dtype)
        return torch.cat([user_vecs, col.expand(user_vecs.shape[0], 1)], -1)

    def keys(self, item_vecs: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Retrieval keys ``[v, scaled log popularity]`` (``[N, dim + 1]``) of ``item``."""
        pop = self.item_log_pop[item].to(item_vecs.dtype).unsqueeze(-1)
        return torch.cat([item_vecs, pop], -1)


def rank_cold_by_popularity(
    scores: np.ndarray, user: np.ndarray, history: np.ndarray, popularity: np.ndarray
) -> np.ndarray:
    """Give users the model cannot personalise for (unknown id, empty history) the
    popularity ranking, in place; returns ``scores``.

    Serving answers exactly those users with its popularity/trending fallback, so the
    evaluator scores them the same way: a figure then describes what is served, and every
    model in a comparison handles cold users alike (the baselines do the same).
    """
    cold = cold_users(user, history)
    if cold.any():
        scores[cold] = popularity
    return scores


def cold_users(user: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Boolean mask of users with an unknown id (0) and an empty history: the users serving
    answers with its fallback instead of the towers."""
    return (np.asarray(user) == 0) & ~np.asarray(history).any(axis=1)
