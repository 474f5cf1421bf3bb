"""Training: Spark training sets, the two-tower model, evaluation, FAISS index, MLflow.

Public API (imports are lazy: the torch side runs on a GPU host without pyspark/mlflow)::

    train(settings, ...) -> TrainResult          # the whole pipeline (rtrec.training.pipeline)
    build_training_sets(settings, ...)           # Spark, point-in-time (rtrec.training.dataset)
    fit(frame, TrainConfig(...)) -> TrainedModel # two-tower (rtrec.training.trainer)
    fit_best(frame, candidates(), validation=...) # both objectives, validation keeps one
    evaluate(model, seen, target) -> metrics     # full ranking (rtrec.training.evaluate)
    build_index(model.item_keys()) -> ItemIndex  # FAISS (rtrec.training.index)
    save_bundle / load_bundle -> ModelBundle     # what serving loads (rtrec.training.artifacts)
    dense_transform(raw, names)                  # the dense-feature transform serving reuses
    load_ranker(bundle) -> ServedRanker          # the bundle's second stage, per request
    TREES_COMPILED                               # ... its trees_engine when compiled
    online_state(user_id, features, limit)       # ... its user state from online features
    ranker_declared(metadata) / save_ranker(...) # (rtrec.training.ranker_bundle)
    add_synthetic_ranker(bundle_dir)             # a second stage for a synthetic bundle
    ModelRegistry(settings)                      # MLflow (rtrec.training.registry)
    GATE_METRIC, TAG_DECISION, metric_key        # ... its metric and tag names
    GateEvidence.from_dict(d)                    # the promotion gate's evidence (DAG step)
    fit_and_evaluate / event_log_for / split_config / flat_metrics / TrainingSets
                                                 # the pipeline's steps (rtrec.dags.steps)
    TwoTower, TwoTowerConfig, TrainedModel, Vocab, InputEncoder
                                                 # a bundle's parts (synthetic bundles)

Other layers import only from here, never a submodule (see ``.importlinter``).
"""

from rtrec.lazy import lazy_exports

_EXPORTS = {
    "train": "rtrec.training.pipeline",
    "TrainResult": "rtrec.training.pipeline",
    "event_log_for": "rtrec.training.pipeline",
    "split_config": "rtrec.training.pipeline",
    "fit_and_evaluate": "rtrec.training.pipeline",
    "flat_metrics": "rtrec.training.results",
    "build_training_sets": "rtrec.training.dataset",
    "SplitConfig": "rtrec.training.dataset",
    "TrainingSets": "rtrec.training.dataset",
    "spark_session": "rtrec.training.dataset",
    "fit": "rtrec.training.trainer",
    "TrainConfig": "rtrec.training.trainer",
    "fit_best": "rtrec.training.trainer",
    "candidates": "rtrec.training.trainer",
    "TrainedModel": "rtrec.training.trainer",
    "TwoTower": "rtrec.training.model",
    "TwoTowerConfig": "rtrec.training.model",
    "Vocab": "rtrec.training.vocab",
    "InputEncoder": "rtrec.training.examples",
    "evaluate": "rtrec.training.evaluate",
    "build_index": "rtrec.training.index",
    "save_bundle": "rtrec.training.artifacts",
    "load_bundle": "rtrec.training.artifacts",
    "ModelBundle": "rtrec.training.artifacts",
    "INDEX": "rtrec.training.artifacts",
    "METADATA": "rtrec.training.artifacts",
    "WEIGHTS": "rtrec.training.artifacts",
    "ModelRegistry": "rtrec.training.registry",
    "load_champion": "rtrec.training.champion",
    "ChampionUnusable": "rtrec.training.champion",
    "download_bundle": "rtrec.training.registry",
    "GATE_METRIC": "rtrec.training.registry",
    "TAG_DECISION": "rtrec.training.registry",
    "metric_key": "rtrec.training.registry",
    "GateEvidence": "rtrec.training.gate",
    "fit_baselines": "rtrec.training.baselines",
    "dense_transform": "rtrec.training.examples",
    "ServedRanker": "rtrec.training.served_rank",
    "online_state": "rtrec.training.served_rank",
    "load_ranker": "rtrec.training.ranker_bundle",
    "TREES_COMPILED": "rtrec.training.served_trees",
    "save_ranker": "rtrec.training.ranker_bundle",
    "ranker_declared": "rtrec.training.ranker_bundle",
    "add_synthetic_ranker": "rtrec.training.synthetic_ranker",
    "SECS_CAP": "rtrec.training.examples",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
