"""A fitted two-tower model with its input encoder: what the evaluator scores and the
bundle saves (``rtrec.training.artifacts``). Imports only torch, numpy and pandas."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from rtrec.training.examples import InputEncoder
from rtrec.training.model import TwoTower, rank_cold_by_popularity
from rtrec.training.train_config import TrainConfig


@dataclass
class TrainedModel:
    """A fitted two-tower model with its encoders; what the evaluator and bundle use."""

    net: TwoTower
    encoders: InputEncoder
    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    prior_scores: dict[float, float] = field(default_factory=dict)
    """Validation NDCG@10 per popularity-prior weight tried (empty when not tuned)."""

    @property
    def item_ids(self) -> list[str]:
        return self.encoders.items.ids

    @torch.no_grad()
    def item_embeddings(self) -> np.ndarray:
        """``[n_items, dim]`` float32, row i = ``item_ids[i]``."""
        self.net.eval()
        dev = next(self.net.parameters()).device
        idx = torch.arange(1, self.encoders.items.size, device=dev)
        cats = torch.as_tensor(self.encoders.item_categories[1:], device=dev)
        return self.net.item_tower(idx, cats).float().cpu().numpy()

    @torch.no_grad()
    def item_keys(self) -> np.ndarray:
        """``[n_items, dim + 1]`` retrieval keys (embedding, log popularity): what the index
        holds, searched with :meth:`user_vectors`."""
        dev = next(self.net.parameters()).device
        emb = torch.as_tensor(self.item_embeddings(), device=dev)
        idx = torch.arange(1, self.encoders.items.size, device=dev)
        return self.net.keys(emb, idx).float().cpu().numpy()

    @torch.no_grad()
    def user_vectors(self, user: np.ndarray, history: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """``[B, dim + 1]`` retrieval queries: the L2-normalised user vector and the prior."""
        self.net.eval()
        dev = next(self.net.parameters()).device
        out = self.net.user_tower(
            torch.as_tensor(user, device=dev),
            torch.as_tensor(history, device=dev),
            torch.as_tensor(dense, dtype=torch.float32, device=dev),
        )
        return self.net.query(out).float().cpu().numpy()

    def score(self, seen: pd.DataFrame, user_ids: list[str]) -> np.ndarray:
        """``[len(user_ids), n_items]`` scores from each user's state as of ``seen``; cold
        users (unknown, no history) get the popularity ranking, as serving answers them."""
        user, history, dense = self.encoders.user_state(seen, user_ids)
        keys = self.item_keys()
        scores = self.user_vectors(user, history, dense) @ keys.T
        return rank_cold_by_popularity(scores, user, history, keys[:, -1])
