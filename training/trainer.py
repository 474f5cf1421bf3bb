"""Fit the two-tower model on a training-set frame.

``fit(train, config)`` returns a :class:`TrainedModel`: the network, its encoders, and the
scoring interface the evaluator and the bundle use. Deterministic under ``config.seed``;
on a GPU it uses bf16 autocast and pinned host memory.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from training.examples import Encoders
from training.loss import sampled_softmax_loss
from training.model import TwoTower, TwoTowerConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    seed: int = 42
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 1e-5
    dim: int = 64
    hidden: int = 128
    history_len: int = 20
    dropout: float = 0.1
    log_q: bool = True
    uniform_negatives: int = 0
    """Extra uniformly sampled negatives per batch (0 = in-batch only)."""
    user_id_dropout: float = 0.1
    device: str = "auto"
    """"auto" (cuda when available), "cpu", "cuda", "cuda:1", ..."""
    select_best: bool = True
    """With a validation frame: keep the epoch with the best validation NDCG@10."""
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_device(requested: str = "auto") -> torch.device:
    """cuda when asked or available, else cpu; a missing GPU is a clear error, not a crash."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        from rtrec.errors import Unavailable

        raise Unavailable(f"device {requested!r} requested but torch sees no CUDA device")
    return device


@dataclass
class TrainedModel:
    """A fitted two-tower model with its encoders; what the evaluator and bundle use."""

    net: TwoTower
    encoders: Encoders
    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)

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
    def user_vectors(self, user: np.ndarray, history: np.ndarray, dense: np.ndarray) -> np.ndarray:
        self.net.eval()
        dev = next(self.net.parameters()).device
        out = self.net.user_tower(
            torch.as_tensor(user, device=dev),
            torch.as_tensor(history, device=dev),
            torch.as_tensor(dense, dtype=torch.float32, device=dev),
        )
        return out.float().cpu().numpy()

    def score(self, seen: pd.DataFrame, user_ids: list[str]) -> np.ndarray:
        """``[len(user_ids), n_items]`` scores from each user's state as of ``seen``."""
        vecs = self.user_vectors(*self.encoders.user_state(seen, user_ids))
        return vecs @ self.item_embeddings().T


def _item_log_q(items: np.ndarray, size: int) -> np.ndarray:
    counts = np.bincount(items, minlength=size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


def fit(
    train: pd.DataFrame,
    config: TrainConfig | None = None,
    *,
    validation: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    progress: bool = True,
) -> TrainedModel:
    """Train on ``train`` (a training-set frame); see the module docstring."""
    cfg = config or TrainConfig()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    enc = Encoders.fit(train, history_len=cfg.history_len, items=items)
    data = enc.encode(train)
    net = TwoTower(
        TwoTowerConfig(
            n_users=enc.users.size,
            n_items=enc.items.size,
            n_categories=enc.categories.size,
            n_dense=len(enc.dense),
            dim=cfg.dim,
            hidden=cfg.hidden,
            history_len=cfg.history_len,
            max_item_categories=enc.item_categories.shape[1],
            dropout=cfg.dropout,
            user_id_dropout=cfg.user_id_dropout,
        )
    ).to(device)
    on_gpu = device.type == "cuda"
    tensors = {k: torch.as_tensor(v) for k, v in data.items()}
    if on_gpu:
        tensors = {k: v.pin_memory().to(device, non_blocking=True) for k, v in tensors.items()}
    item_cats = torch.as_tensor(enc.item_categories, device=device)
    log_q = torch.as_tensor(_item_log_q(data["item"], enc.items.size), device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train)
    steps = max(1, (n + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps * cfg.epochs, pct_start=0.1
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    model = TrainedModel(net, enc, cfg)
    best: tuple[float, dict[str, Any]] | None = None
    for epoch in range(cfg.epochs):
        net.train()
        start, total = time.perf_counter(), 0.0
        perm = torch.randperm(n, generator=gen).to(device)
        bar = tqdm(
            range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False
        )
        for s in bar:
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            item = tensors["item"][idx]
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_gpu):
                users = net.user_tower(
                    tensors["user"][idx], tensors["history"][idx], tensors["dense"][idx]
                )
                items_v = net.item_tower(item, item_cats[item])
                extra = extra_q = None
                if cfg.uniform_negatives:
                    neg = torch.randint(
                        1, enc.items.size, (cfg.uniform_negatives,), generator=gen
                    ).to(device)
                    extra = net.item_tower(neg, item_cats[neg])
                    extra_q = torch.full(
                        (len(neg),), -float(np.log(enc.items.size - 1)), device=device
                    )
                loss = sampled_softmax_loss(
                    users,
                    items_v,
                    item,
                    net.inv_temperature,
                    log_q=log_q[item] if cfg.log_q else None,
                    extra_item_vecs=extra,
                    extra_log_q=extra_q if cfg.log_q else None,
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        record = {"epoch": epoch + 1, "loss": total / steps, "seconds": time.perf_counter() - start}
        if validation is not None and cfg.select_best:
            from training.evaluate import evaluate

            record["val_ndcg@10"] = evaluate(model, train, validation)["ndcg@10"]
            if best is None or record["val_ndcg@10"] > best[0]:
                best = (record["val_ndcg@10"], copy.deepcopy(net.state_dict()))
        model.history.append(record)
        logger.info("epoch done", extra=record)
    if best is not None:
        net.load_state_dict(best[1])
    net.eval()
    return model
