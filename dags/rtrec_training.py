"""``rtrec_training``: training set -> train -> register -> gate -> tell serving.

Triggered by hand, by ``rtrec_drift_monitor`` (``reason`` in the run conf) or on a schedule
you add. Params: ``data`` (a data set instead of the stream's offline log), ``protocol``,
``epochs``, ``reason``. ``train_two_tower`` selects on validation, refits on train +
validation, scores the challenger and the champion on the gate slice (the most recent
period, untouched by selection) and builds the served index, failing when its recall is
below the bar; the gate promotes on that evidence (``rtrec.training.gate``); serving is told
only when it did. With ``training.promotion`` ``ab`` a passing model becomes the
``challenger`` of an A/B test instead (the ``promote`` XCom says ``ab_test``), which
``rtrec_experiment_decision`` later promotes or archives on the online readout.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import DAG, Param
from rtrec.dags.operators import (
    BuildTrainingSetOperator,
    EvaluateAndRegisterOperator,
    PromoteOperator,
    TellServingOperator,
    TrainTwoTowerOperator,
    is_promoted,
)

with DAG(
    dag_id="rtrec_training",
    description="Spark training set, two-tower with its FAISS index, MLflow challenger, gate",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    tags=["rtrec", "training"],
    doc_md=__doc__,
    params={
        "data": Param(None, type=["null", "string"], description="data set; default offline log"),
        "protocol": Param("temporal", enum=["temporal", "random"]),
        "epochs": Param(None, type=["null", "integer"], minimum=1),
        "reason": Param("manual", type="string", description="why this run (drift verdict)"),
    },
) as dag:
    build = BuildTrainingSetOperator(
        task_id="build_training_set", data="{{ params.data }}", protocol="{{ params.protocol }}"
    )
    train = TrainTwoTowerOperator(
        task_id="train_two_tower", training_sets=build.output["root"], epochs="{{ params.epochs }}"
    )
    register = EvaluateAndRegisterOperator(
        task_id="evaluate_and_register", fit=train.output, reason="{{ params.reason }}"
    )
    promote = PromoteOperator(
        task_id="promote", version=register.output["version"], fit=train.output
    )
    gate = ShortCircuitOperator(
        task_id="gate_passed", python_callable=is_promoted, op_args=[promote.output]
    )
    tell = TellServingOperator(task_id="tell_serving", version=register.output["version"])

    register >> promote >> gate >> tell
