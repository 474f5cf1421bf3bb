"""Training: Spark training sets, the two-tower model, evaluation, FAISS index, MLflow.

Public API (imports are lazy: the torch side runs on a GPU host without pyspark/mlflow)::

    train(settings, ...) -> TrainResult          # the whole pipeline (training.pipeline)
    build_training_sets(settings, ...)           # Spark, point-in-time (training.dataset)
    fit(frame, TrainConfig(...)) -> TrainedModel # two-tower (training.trainer)
    fit_best(frame, candidates(), validation=...) # both objectives, validation keeps one
    evaluate(model, seen, target) -> metrics     # full ranking (training.evaluate)
    build_index(model.item_keys()) -> ItemIndex  # FAISS (training.index)
    save_bundle / load_bundle -> ModelBundle     # what serving loads (training.artifacts)
    dense_transform(raw, names)                  # the dense-feature transform serving reuses
    ModelRegistry(settings)                      # MLflow (training.registry)
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "train": "training.pipeline",
    "TrainResult": "training.pipeline",
    "build_training_sets": "training.dataset",
    "SplitConfig": "training.dataset",
    "fit": "training.trainer",
    "TrainConfig": "training.trainer",
    "fit_best": "training.trainer",
    "candidates": "training.trainer",
    "evaluate": "training.evaluate",
    "build_index": "training.index",
    "save_bundle": "training.artifacts",
    "load_bundle": "training.artifacts",
    "ModelBundle": "training.artifacts",
    "ModelRegistry": "training.registry",
    "fit_baselines": "training.baselines",
    "dense_transform": "training.examples",
    "SECS_CAP": "training.examples",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
