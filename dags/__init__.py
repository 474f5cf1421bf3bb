"""Airflow DAGs and reusable operators (the orchestration of every stage).

Public API::

    rtrec.dags.operators   BuildTrainingSetOperator, TrainTwoTowerOperator,
                     EvaluateAndRegisterOperator, BuildIndexOperator, PromoteOperator,
                     TellServingOperator, MaterializeFeaturesOperator, DriftCheckOperator,
                     ExperimentDecisionOperator,
                     is_drifted / is_promoted (short-circuit callables)
    rtrec.dags.steps       run_step(name, arguments) -> dict   # the same steps without Airflow

DAG files: ``rtrec_training.py``, ``rtrec_drift_monitor.py``, ``rtrec_feature_backfill.py``,
``rtrec_experiment_decision.py``.
Importing ``rtrec.dags`` itself loads nothing from Airflow. The steps call only the public
API of the stages (``from rtrec.training import ...``); running Airflow itself (the embedded
standalone, the in-process DAG runner, ``rtrec airflow``) is the app layer's
(``rtrec.app.embedded_airflow``, ``rtrec.app.dag_runs``).
"""
