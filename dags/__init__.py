"""Airflow DAGs and reusable operators (the orchestration of every stage).

Public API::

    rtrec.dags.operators   BuildTrainingSetOperator, TrainTwoTowerOperator,
                     EvaluateAndRegisterOperator, BuildIndexOperator, PromoteOperator,
                     TellServingOperator, MaterializeFeaturesOperator, DriftCheckOperator,
                     is_drifted / is_promoted (short-circuit callables)
    rtrec.dags.steps       run_step(name, arguments) -> dict   # the same steps without Airflow
    rtrec.dags.embedded    up(settings) / down(settings)       # `rtrec airflow up|down`

DAG files: ``rtrec_training.py``, ``rtrec_drift_monitor.py``, ``rtrec_feature_backfill.py``.
Importing ``dags`` itself loads nothing from Airflow.
"""
