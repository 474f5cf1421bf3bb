"""The training objectives: which examples a step sees and the loss on them.

``NextItemSteps``: one example per training row, its history as of the row, one positive,
in-batch softmax (log-Q) plus optional uniform negatives. ``MultinomialSteps``: one example
per user, its history the bag of the user's training items with some dropped (denoising),
its positives all of those items; the candidates are the batch's positives (in-batch, log-Q)
plus optional uniform negatives — with the whole catalog as negatives, Mult-DAE's
full softmax. Imports only torch/numpy/pandas.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from rtrec.training.examples import InputEncoder
from rtrec.training.loss import multinomial_loss, sampled_softmax_loss
from rtrec.training.model import TwoTower

if TYPE_CHECKING:
    from rtrec.training.trainer import TrainConfig


def item_log_q(items: np.ndarray, size: int) -> np.ndarray:
    """log of each item index's share of the training rows (add-one smoothed)."""
    counts = np.bincount(items, minlength=size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


def _drop(history: torch.Tensor, rate: float) -> torch.Tensor:
    """Hide a ``rate`` share of the history items (padding stays padding)."""
    if rate <= 0:
        return history
    keep = torch.rand(history.shape, device=history.device) >= rate
    return history * keep


class _Steps:
    cfg: TrainConfig
    enc: InputEncoder
    device: torch.device
    n: int
    """Examples an epoch."""

    def _setup(self, cfg: TrainConfig, enc: InputEncoder, device: torch.device) -> None:
        self.cfg, self.enc, self.device = cfg, enc, device
        self.item_cats = torch.as_tensor(enc.item_categories, device=device)
        n_items = enc.items.size - 1
        self.full = cfg.uniform_negatives < 0 or cfg.uniform_negatives >= n_items
        self.uniform_log_q = -float(np.log(n_items))

    def _tensors(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {k: torch.as_tensor(v) for k, v in arrays.items()}
        if self.device.type == "cuda":
            out = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in out.items()}
        return out

    @property
    def steps(self) -> int:
        return max(1, (self.n + self.cfg.batch_size - 1) // self.cfg.batch_size)

    def batches(self, gen: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(self.n, generator=gen).to(self.device)
        for s in range(self.steps):
            yield perm[s * self.cfg.batch_size : (s + 1) * self.cfg.batch_size]

    def _items(self, net: TwoTower, idx: torch.Tensor) -> torch.Tensor:
        return net.item_tower(idx, self.item_cats[idx])

    def _all_items(self) -> torch.Tensor:
        return torch.arange(1, self.enc.items.size, device=self.device)

    def _uniform(self, gen: torch.Generator) -> torch.Tensor:
        k = self.cfg.uniform_negatives
        return torch.randint(1, self.enc.items.size, (k,), generator=gen).to(self.device)


class NextItemSteps(_Steps):
    def __init__(
        self, frame: pd.DataFrame, enc: InputEncoder, cfg: TrainConfig, device: torch.device
    ) -> None:
        self._setup(cfg, enc, device)
        data = enc.encode(frame)
        self.t = self._tensors(data)
        self.log_q = torch.as_tensor(item_log_q(data["item"], enc.items.size), device=device)
        self.n = len(frame)

    def loss(self, net: TwoTower, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg, t = self.cfg, self.t
        item = t["item"][idx]
        history = _drop(t["history"][idx], cfg.history_dropout)
        users = net.user_tower(t["user"][idx], history, t["dense"][idx])
        extra = extra_ids = extra_q = None
        if cfg.uniform_negatives:
            extra_ids = self._all_items() if self.full else self._uniform(gen)
            extra = self._items(net, extra_ids)
            extra_q = torch.full((len(extra_ids),), self.uniform_log_q, device=self.device)
        return sampled_softmax_loss(
            users,
            self._items(net, item),
            item,
            net.inv_temperature,
            log_q=self.log_q[item] if cfg.log_q else None,
            extra_item_vecs=extra,
            extra_log_q=extra_q if cfg.log_q else None,
            extra_item_ids=extra_ids,
        )


class MultinomialSteps(_Steps):
    def __init__(
        self, frame: pd.DataFrame, enc: InputEncoder, cfg: TrainConfig, device: torch.device
    ) -> None:
        self._setup(cfg, enc, device)
        users = sorted(frame["user_id"].astype(str).unique())
        user, history, dense = enc.user_state(frame, users)
        width = max(1, int((history > 0).sum(1).max()))
        by_user = frame.groupby(frame["user_id"].astype(str))["item_id"]
        lists = by_user.agg(lambda s: list(s.astype(str).unique())).reindex(users)
        targets = enc.items.encode_lists(lists.tolist(), max(len(x) for x in lists))
        self.t = self._tensors(
            {"user": user, "history": history[:, :width], "dense": dense, "targets": targets}
        )
        pairs = targets[targets > 0]
        self.log_q = torch.as_tensor(item_log_q(pairs, enc.items.size), device=device)
        self.n = len(users)

    def loss(self, net: TwoTower, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg, t, size = self.cfg, self.t, self.enc.items.size
        targets = t["targets"][idx]
        history = _drop(t["history"][idx], cfg.history_dropout)
        users = net.user_tower(t["user"][idx], history, t["dense"][idx])
        hot = torch.zeros((len(idx), size), device=self.device)
        hot.scatter_(1, targets, 1.0)
        hot[:, 0] = 0.0  # padding
        if self.full:
            cand = self._all_items()
            return multinomial_loss(users, self._items(net, cand), hot[:, 1:], net.inv_temperature)
        cand = torch.unique(targets[targets > 0])
        extra = extra_q = hits = None
        if cfg.uniform_negatives:
            neg = self._uniform(gen)
            extra, hits = self._items(net, neg), hot[:, neg] > 0
            extra_q = torch.full((len(neg),), self.uniform_log_q, device=self.device)
        return multinomial_loss(
            users,
            self._items(net, cand),
            hot[:, cand],
            net.inv_temperature,
            log_q=self.log_q[cand] if cfg.log_q else None,
            extra_item_vecs=extra,
            extra_log_q=extra_q if cfg.log_q else None,
            extra_hits=hits,
        )


def make_steps(
    frame: pd.DataFrame, enc: InputEncoder, cfg: TrainConfig, device: torch.device
) -> NextItemSteps | MultinomialSteps:
    kind = MultinomialSteps if cfg.objective == "multinomial" else NextItemSteps
    return kind(frame, enc, cfg, device)
