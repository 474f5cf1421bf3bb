"""``rtrec_drift_monitor``: Evidently drift check every 6 hours; on drift, alert and retrain.

The check compares the latest window of the stream's offline log with the reference
window before it, on stream features, champion scores / embedding statistics and the
outcome rate; every run lands in the Evidently project's dashboard. A drifted verdict
has already been sent to the Kafka alerts topic and the log by the check; the DAG then
triggers ``rtrec_training`` with the verdict's reason in the run conf.

The check judges the offline log only once the log's watermark covers the windows it
cuts (the log is flushed a couple of seconds behind the stream): it waits up to
``monitoring.offline_wait_s`` (setting; ``RTREC_MONITORING__OFFLINE_WAIT_S``) and fails
the task naming the partitions, offsets and event time missing, unless
``monitoring.offline_coverage`` says to judge as of the watermark. Windows too small to
judge are an outcome, not a failure: the ``drift_check`` XComs say ``status`` "not
judged", ``judged`` false and why in ``summary``, and nothing is triggered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param
from rtrec.dags.operators import DriftCheckOperator, is_drifted

with DAG(
    dag_id="rtrec_drift_monitor",
    description="Evidently drift on features, scores and outcomes; retrain on drift",
    schedule=timedelta(hours=6),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    tags=["rtrec", "monitoring"],
    doc_md=__doc__,
    params={
        "now_ms": Param(None, type=["null", "integer"], description="window end; default latest"),
        "reference_days": Param(7.0, type="number", exclusiveMinimum=0),
        "window_days": Param(1.0, type="number", exclusiveMinimum=0),
        "scores": Param(True, type="boolean", description="score windows with the champion"),
        "epochs": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="epoch cap for the training it triggers (its own param); default none",
        ),
    },
) as dag:
    check = DriftCheckOperator(
        task_id="drift_check",
        now_ms="{{ params.now_ms }}",
        reference_days="{{ params.reference_days }}",
        window_days="{{ params.window_days }}",
        scores="{{ params.scores }}",
    )
    drifted = ShortCircuitOperator(
        task_id="drifted", python_callable=is_drifted, op_args=[check.output]
    )
    retrain = TriggerDagRunOperator(
        task_id="trigger_training",
        trigger_dag_id="rtrec_training",
        conf={
            "reason": "drift: {{ ti.xcom_pull(task_ids='drift_check', key='reason') }}",
            "epochs": "{{ params.epochs }}",
        },
    )
    drifted >> retrain
