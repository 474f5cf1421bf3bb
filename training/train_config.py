"""The two-tower training configuration and its presets (one per objective).

Imports nothing beyond the standard library: the configuration is read by the trainer, the
bundle (``train_config`` in its metadata) and the benchmarks alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Objective = Literal["next_item", "multinomial"]


@dataclass
class TrainConfig:
    """How one two-tower model is fitted: its objective, sizes, optimiser and selection.
    The defaults are the ``next_item`` objective's; :meth:`user_bag` and :meth:`published`
    give the other presets."""

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
