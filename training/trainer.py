"""Fit the two-tower model on a training-set frame.

``fit(train, config)`` returns a :class:`TrainedModel`: the network, its encoders, and the
scoring interface the evaluator and the bundle use. Deterministic under ``config.seed``;
on a GPU it uses bf16 autocast and pinned host memory.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from rtrec.training.examples import InputEncoder
from rtrec.training.model import TwoTower, TwoTowerConfig, rank_cold_by_popularity
from rtrec.training.objectives import make_steps
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


Objective = Literal["next_item", "multinomial"]


@dataclass
class TrainConfig:
    seed: int = 42
    epochs: int = 10
    batch_size: int = 1024
    """Rows a step (next_item) or users a step (multinomial)."""
    lr: float = 3e-3
    weight_decay: float = 1e-5
    dim: int = 64
    hidden: int = 128
    history_len: int = 20
    dropout: float = 0.1
    log_q: bool = True
    """log-Q correction of the in-batch negatives (the uniform ones get the uniform q)."""
    uniform_negatives: int = 0
    """Extra uniformly sampled negatives per step (0 = in-batch only; -1 or at least the
    catalog size = every item, a full softmax)."""
    user_id_dropout: float = 0.1
    objective: Objective = "next_item"
    """next_item: one example per training row, its history as of the row (the temporal
    protocol, as serving sees it). multinomial: one example per user, its history the
    bag of all the user's training items (denoised by ``history_dropout``), its
    positives every one of those items (Mult-DAE's likelihood; the random split)."""
    history_dropout: float = 0.0
    """Share of history items hidden from the user tower at training (denoising)."""
    position_weights: bool = True
    """Learned recency weights over history positions (off for bags)."""
    stream_features: bool = True
    """Feed the dense stream features (windowed counts, recency) to the user tower. Off for
    the random split: there they are as of the user's last training row, a per-user
    fingerprint that overfits like an id (measured on ML-100K validation)."""
    init_temperature: float = 0.05
    popularity_prior: float | None = 0.0
    """Weight of log(1 + training count) added to the item scores at ranking (not trained:
    the softmax's maximum-likelihood fit is calibrated, while top-k ranking on MovieLens
    rewards a little more popularity). None = chosen from ``PRIOR_GRID`` on the validation
    frame (0 without one). Retrieval folds it into one extra dimension (TwoTower.query)."""
    device: str = "auto"
    """"auto" (cuda when available), "cpu", "cuda", "cuda:1", ..."""
    select_best: bool = True
    """With a validation frame: keep the epoch with the best validation NDCG@10."""
    schedule_epochs: int | None = None
    """Length of the one-cycle learning-rate schedule (None = ``epochs``); a refit that
    stops at the epoch chosen on validation keeps the tuning run's schedule."""
    eval_every: int = 1
    """Epochs between validation checks (with a validation frame)."""
    patience: int | None = 2
    """Stop after this many validation checks without improvement (None = never). Two
    leave every chosen epoch unchanged on ML-100K and the synthetic data (measured) and
    save the demo's training run the epochs after next-item's early peak."""
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def user_bag(cls, **overrides: Any) -> TrainConfig:
        """Defaults for the ``multinomial`` objective on time-ordered data.

        One example per user: the bag of its ``history_len`` most recent items (what the
        online store's ``recent_items`` holds) predicts every item of the user, the whole
        catalog as negatives. Where taste is stable and events repeat items (sessions,
        funnels), this beats ``next_item``; where order carries the signal it loses
        (ML-100K temporal). :func:`fit_best` picks between them on validation.
        """
        base: dict[str, Any] = {
            "objective": "multinomial",
            "history_len": BAG_HISTORY,
            "position_weights": False,
            "uniform_negatives": -1,
            "history_dropout": 0.75,
            "lr": 1e-3,
            "user_id_dropout": 1.0,
            # 256 users a step: validation level with 64 on the synthetic and demo data
            # (0.218 vs 0.220, 0.154 vs 0.153), half the demo's training time.
            "batch_size": 256,
            "epochs": 40,
            "eval_every": 5,
            "patience": 2,
            "popularity_prior": None,
        }
        return cls(**{**base, **overrides})

    @classmethod
    def published(cls, **overrides: Any) -> TrainConfig:
        """Defaults for the random per-user split of the published ML-100K tables: the
        user bag over all of a user's training items, without stream features.

        Chosen on a validation cut of the training part (bench/quality.py), never on test.
        """
        base: dict[str, Any] = {
            "history_len": 1000,
            "stream_features": False,
            "batch_size": 64,
            "epochs": 200,
            "patience": 10,
        }
        return cls.user_bag(**{**base, **overrides})


BAG_HISTORY = 200
"""History items of the user-bag preset; ``rtrec.features.RECENT_ITEMS`` keeps at least as many
online (a test holds them together), so serving sees the bag that training saw."""

PRIOR_GRID = (0.0, 0.1, 0.2, 0.3, 0.5)
"""Popularity-prior weights tried on validation when ``popularity_prior`` is None."""


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


def _param_groups(net: TwoTower, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on embeddings and weight matrices only: decaying the temperature,
    recency weights, biases or norms would pull them toward zero, not regularise."""
    decay, keep = [], []
    for p in net.parameters():
        (decay if p.ndim >= 2 else keep).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": keep, "weight_decay": 0.0},
    ]


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
    enc = InputEncoder.fit(
        train, history_len=cfg.history_len, items=items, dense=cfg.stream_features
    )
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
            init_temperature=cfg.init_temperature,
            user_id_dropout=cfg.user_id_dropout,
            position_weights=cfg.position_weights,
        )
    ).to(device)
    _set_item_log_pop(net, train, enc)
    on_gpu = device.type == "cuda"
    steps = make_steps(train, enc, cfg, device)
    opt = torch.optim.AdamW(_param_groups(net, cfg.weight_decay), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=cfg.lr,
        total_steps=steps.steps * max(cfg.epochs, cfg.schedule_epochs or 0),
        pct_start=0.1,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    model = TrainedModel(net, enc, cfg)
    best: tuple[float, dict[str, Any]] | None = None
    stale = 0
    for epoch in range(cfg.epochs):
        net.train()
        start, total = time.perf_counter(), 0.0
        bar = tqdm(
            steps.batches(gen),
            total=steps.steps,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            leave=False,
        )
        for idx in bar:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_gpu):
                loss = steps.loss(net, idx, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        record = {
            "epoch": epoch + 1,
            "loss": total / steps.steps,
            "seconds": time.perf_counter() - start,
        }
        last = epoch + 1 == cfg.epochs
        check = (epoch + 1) % max(1, cfg.eval_every) == 0 or last
        if validation is not None and cfg.select_best and check:
            from rtrec.training.evaluate import evaluate

            record["val_ndcg@10"] = evaluate(model, train, validation)["ndcg@10"]
            if best is None or record["val_ndcg@10"] > best[0]:
                best, stale = (record["val_ndcg@10"], copy.deepcopy(net.state_dict())), 0
            else:
                stale += 1
        model.history.append(record)
        logger.info("epoch done", extra=record)
        if cfg.patience is not None and stale >= cfg.patience:
            break
    if best is not None:
        net.load_state_dict(best[1])
    net.eval()
    prior = cfg.popularity_prior
    if prior is None:
        prior = _tune_prior(model, train, validation) if validation is not None else 0.0
    net.pop_prior.fill_(prior)
    return model


def candidates(
    protocol: str = "temporal", *, max_epochs: int | None = None, **overrides: Any
) -> dict[str, TrainConfig]:
    """The product's candidate configurations, ``overrides`` (seed, ...) applied to each:
    ``next_item`` and the user bag (its published preset under the random split).
    ``max_epochs`` caps each preset's own epoch count (a quick run, a test)."""
    bag = TrainConfig.published if protocol == "random" else TrainConfig.user_bag
    out = {"next_item": TrainConfig(**overrides), "user_bag": bag(**overrides)}
    if max_epochs is not None:
        out = {n: replace(c, epochs=min(c.epochs, max_epochs)) for n, c in out.items()}
    return out


def fit_best(
    train: pd.DataFrame,
    configs: Mapping[str, TrainConfig],
    *,
    validation: pd.DataFrame | None,
    items: pd.DataFrame | None = None,
    progress: bool = True,
) -> tuple[str, TrainedModel, dict[str, float]]:
    """Fit each named configuration, keep the best on validation NDCG@10.

    Which objective suits a data set is an empirical question (the user bag wins where
    taste is stable and sessions repeat items, next-item where order carries the signal;
    both measured, see README), so validation decides rather than a fixed default. Returns
    the winner's name, the model, and every candidate's score; without a validation frame
    the first configuration is fitted alone (score empty).
    """
    from rtrec.training.evaluate import evaluate

    if not configs:
        raise ValueError("fit_best needs at least one configuration")
    if validation is None:
        name, cfg = next(iter(configs.items()))
        return name, fit(train, cfg, items=items, progress=progress), {}
    scores: dict[str, float] = {}
    best: tuple[str, TrainedModel] | None = None
    for name, cfg in configs.items():
        model = fit(train, cfg, validation=validation, items=items, progress=progress)
        # A tuned prior already scored the final model on validation: reuse, not re-rank.
        scores[name] = (
            max(model.prior_scores.values())
            if model.prior_scores
            else evaluate(model, train, validation)["ndcg@10"]
        )
        logger.info("candidate fitted", extra={"candidate": name, "val_ndcg@10": scores[name]})
        if best is None or scores[name] > scores[best[0]]:
            best = (name, model)
    assert best is not None
    return best[0], best[1], scores


def _set_item_log_pop(net: TwoTower, train: pd.DataFrame, enc: InputEncoder) -> None:
    """log(1 + training rows) per item index (0 for padding), kept scaled to [0, 1]."""
    counts = np.bincount(enc.items.encode(train["item_id"].astype(str)), minlength=enc.items.size)
    counts[0] = 0
    log_pop = np.log1p(counts)
    scale = max(float(log_pop.max()), 1e-6)
    net.item_log_pop.copy_(torch.as_tensor(log_pop / scale, dtype=torch.float32))
    net.log_pop_scale.fill_(scale)


def _tune_prior(model: TrainedModel, train: pd.DataFrame, validation: pd.DataFrame) -> float:
    """The ``PRIOR_GRID`` weight with the best validation NDCG@10 (the smallest on ties)."""
    from rtrec.training.evaluate import choose_on_validation

    best, scores = choose_on_validation(
        model, model.net.pop_prior.fill_, PRIOR_GRID, train, validation
    )
    logger.info("popularity prior chosen", extra={"prior": best, "val_ndcg@10": scores})
    model.prior_scores = scores
    return best


def refit_config(model: TrainedModel) -> TrainConfig:
    """The configuration to refit ``model``'s choices on more data (train + validation):
    the epoch validation chose, the tuned popularity prior, no selection.

    The user bag keeps its tuning run's long one-cycle schedule up to the chosen epoch
    (stopping early within it, as selection did); next-item runs a full one-cycle over the
    chosen epochs (a few). Without validation checks the configured epochs stand.
    """
    cfg = model.config
    checked = [h for h in model.history if "val_ndcg@10" in h]
    epochs = int(max(checked, key=lambda h: h["val_ndcg@10"])["epoch"]) if checked else cfg.epochs
    keep = cfg.epochs if cfg.objective == "multinomial" else None
    return replace(
        cfg,
        epochs=epochs,
        schedule_epochs=keep,
        popularity_prior=round(float(model.net.pop_prior), 6),
        select_best=False,
        patience=None,
    )
