"""My own DAG from rtrec's operators: refresh the online features, check drift, retrain.

Unlike ``rtrec_drift_monitor`` it retrains whatever the verdict says, with the verdict
as the run's reason. Saved in ``<airflow home>/dags`` (``~/.rtrec/airflow/dags`` by
default), it runs under the scheduler of ``rtrec airflow up`` beside rtrec's DAGs.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, Param
from rtrec.dags.operators import (
    BuildTrainingSetOperator,
    DriftCheckOperator,
    EvaluateAndRegisterOperator,
    MaterializeFeaturesOperator,
    PromoteOperator,
    TrainTwoTowerOperator,
)

with DAG(
    dag_id="my_refresh_and_retrain",
    schedule=None,  # or "@weekly"
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    params={
        "now_ms": Param(None, type=["null", "integer"], description="drift window end"),
        "epochs": Param(1, type="integer", minimum=1),
    },
):
    backfill = MaterializeFeaturesOperator(task_id="backfill_features", days=7.0)
    drift = DriftCheckOperator(
        task_id="drift_check", now_ms="{{ params.now_ms }}", scores=False, alert=False
    )
    build = BuildTrainingSetOperator(task_id="training_set", protocol="temporal")
    train = TrainTwoTowerOperator(
        task_id="train", training_sets=build.output["root"], epochs="{{ params.epochs }}"
    )
    register = EvaluateAndRegisterOperator(
        task_id="register",
        fit=train.output,
        reason="my retrain; {{ ti.xcom_pull(task_ids='drift_check', key='reason') }}",
    )
    promote = PromoteOperator(
        task_id="promote", version=register.output["version"], fit=train.output
    )

    backfill >> drift >> build
