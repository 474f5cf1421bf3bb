"""``rtrec_experiment_decision``: the A/B test's readout -> promote, archive or alert.

Every hour (and by hand) the readout of the registry's current champion/challenger pair
(``rtrec experiment status``) decides: ``challenger wins`` promotes the challenger through
the registry (serving hot-swaps to it; ``tell_serving`` confirms), ``champion wins``
archives it (serving stops splitting traffic), a sample ratio mismatch sends an alert on
the alerts topic and decides nothing, ``collecting`` and ``no difference`` do nothing. The
decision and its reason are the ``experiment_decision`` task's XComs. With
``training.promotion`` ``ab`` the training DAG's gate starts the A/B tests this DAG ends.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import DAG
from rtrec.dags.operators import ExperimentDecisionOperator, TellServingOperator, is_promoted

with DAG(
    dag_id="rtrec_experiment_decision",
    description="A/B readout of champion vs challenger: promote, archive, or alert on SRM",
    schedule=timedelta(hours=1),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    tags=["rtrec", "experiments"],
    doc_md=__doc__,
) as dag:
    decide = ExperimentDecisionOperator(task_id="experiment_decision")
    promoted = ShortCircuitOperator(
        task_id="challenger_promoted", python_callable=is_promoted, op_args=[decide.output]
    )
    tell = TellServingOperator(task_id="tell_serving", version=decide.output["challenger_version"])
    promoted >> tell
