"""Fit the two-tower model on a training-set frame, and choose among configurations.

``fit(train, config)`` returns a :class:`~rtrec.training.trained_model.TrainedModel`: the
network, its input encoder, and the scoring interface the evaluator and the bundle use.
Deterministic under ``config.seed``; on a GPU it uses bf16 autocast and pinned host memory.
:func:`fit_best` fits each candidate configuration and keeps the best on validation;
:func:`refit_config` repeats its choices on more data. Imports only torch, numpy, pandas.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from rtrec.training.examples import InputEncoder
from rtrec.training.model import TwoTower, TwoTowerConfig
from rtrec.training.objectives import MultinomialSteps, NextItemSteps, make_steps
from rtrec.training.train_config import BAG_HISTORY, PRIOR_GRID, Objective, TrainConfig
from rtrec.training.trained_model import TrainedModel
from tqdm.auto import tqdm

__all__ = [
    "BAG_HISTORY",
    "PRIOR_GRID",
    "Objective",
    "TrainConfig",
    "TrainedModel",
    "candidates",
    "fit",
    "fit_best",
    "refit_config",
    "select_device",
]

logger = logging.getLogger(__name__)


def select_device(requested: str = "auto") -> torch.device:
    """cuda when asked or available, else cpu; a missing GPU is a clear error, not a crash."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        from rtrec.errors import Unavailable

        raise Unavailable(f"device {requested!r} requested but torch sees no CUDA device")
    return device


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
    net = _network(enc, cfg).to(device)
    _set_item_log_pop(net, train, enc)
    steps = make_steps(train, enc, cfg, device)
    model = TrainedModel(net, enc, cfg)
    best = _train_epochs(
        model, steps, train, validation, on_gpu=device.type == "cuda", progress=progress
    )
    if best is not None:
        net.load_state_dict(best)
    net.eval()
    prior = cfg.popularity_prior
    if prior is None:
        prior = _tune_prior(model, train, validation) if validation is not None else 0.0
    net.pop_prior.fill_(prior)
    return model


def _network(enc: InputEncoder, cfg: TrainConfig) -> TwoTower:
    """The towers, sized by the encoder's vocabularies and the configuration."""
    return TwoTower(
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
    )


def _train_epochs(
    model: TrainedModel,
    steps: NextItemSteps | MultinomialSteps,
    train: pd.DataFrame,
    validation: pd.DataFrame | None,
    *,
    on_gpu: bool,
    progress: bool,
) -> dict[str, Any] | None:
    """The epochs, each recorded in ``model.history``; with a validation frame (and
    ``select_best``) every ``eval_every`` epochs are scored, training stops after
    ``patience`` checks without improvement, and the best epoch's weights are returned."""
    cfg, net = model.config, model.net
    opt = torch.optim.AdamW(_param_groups(net, cfg.weight_decay), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=cfg.lr,
        total_steps=steps.steps * max(cfg.epochs, cfg.schedule_epochs or 0),
        pct_start=0.1,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    best: tuple[float, dict[str, Any]] | None = None
    stale = 0
    for epoch in range(cfg.epochs):
        record = _epoch(net, steps, opt, sched, gen, epoch=epoch, on_gpu=on_gpu, progress=progress)
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
    return best[1] if best is not None else None


def _epoch(
    net: TwoTower,
    steps: NextItemSteps | MultinomialSteps,
    opt: torch.optim.Optimizer,
    sched: Any,
    gen: torch.Generator,
    *,
    epoch: int,
    on_gpu: bool,
    progress: bool,
) -> dict[str, float]:
    """One pass over the objective's batches; returns the epoch's record."""
    net.train()
    start, total = time.perf_counter(), 0.0
    bar = tqdm(
        steps.batches(gen),
        total=steps.steps,
        desc=f"epoch {epoch + 1}/{steps.cfg.epochs}",
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
    return {
        "epoch": epoch + 1,
        "loss": total / steps.steps,
        "seconds": time.perf_counter() - start,
    }


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
