"""Every choice made on validation, and the refit of those choices on more data.

:func:`select_on_validation` fits the candidate objectives on train and keeps one on
validation (with its epochs and popularity prior, ``rtrec.training.trainer.fit_best``) and
tunes EASE's L2; nothing here sees the gate slice or test. :func:`refit` repeats the
chosen settings on train + validation, so the served model learns from the freshest
labelled period.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rtrec.training.baselines import fit_baselines
from rtrec.training.evaluate import evaluate
from rtrec.training.results import MODEL_NAME
from rtrec.training.sets import Frames
from rtrec.training.trainer import candidates, fit, fit_best, refit_config

from rtrec.config import Settings


@dataclass
class Selection:
    """What validation chose: the candidate, its tuned model (fitted on train), EASE's L2,
    and every model's validation metrics."""

    chosen: str
    tuned: Any
    scores: dict[str, float]
    ease_l2: float
    val_metrics: dict[str, dict[str, float]]


def select_on_validation(
    settings: Settings, protocol: str, frames: Frames, *, epochs: int | None, progress: bool
) -> Selection:
    """The objective, epochs and prior (``fit_best``) and EASE's L2, chosen on validation."""
    configs = candidates(protocol, max_epochs=epochs, seed=settings.seed)
    train, validation = frames.train, frames.validation
    chosen, tuned, scores = fit_best(train, configs, validation=validation, progress=progress)
    baselines = fit_baselines(train, validation)
    models = {MODEL_NAME: tuned, **baselines}
    val_metrics = {n: evaluate(m, train, validation) for n, m in models.items()}
    ease_l2 = baselines["EASE"].l2
    if ease_l2 is None:
        raise RuntimeError("fit_baselines left EASE unfitted")
    return Selection(chosen, tuned, scores, float(ease_l2), val_metrics)


def refit(selection: Selection, frames: Frames, *, progress: bool) -> tuple[Any, dict[str, Any]]:
    """The served model and the baselines, refitted on train + validation with the chosen
    settings, so the freshest labelled period is learned from."""
    data = frames.fit_part
    model = fit(data, refit_config(selection.tuned), progress=progress)
    finals = fit_baselines(data, None, ease_l2=selection.ease_l2)
    return model, finals
