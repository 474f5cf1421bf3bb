"""``rtrec_feature_backfill``: rebuild the online store from the offline event log.

For a fresh or flushed Redis, or a new feature view: user stream features are recomputed
from the last ``days`` of logged events with the stream processor's own aggregate, and
Feast materializes the catalog and profile views. Run by hand (params ``end_ms``, ``days``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, Param
from rtrec.dags.operators import MaterializeFeaturesOperator

with DAG(
    dag_id="rtrec_feature_backfill",
    description="Backfill online features from the offline event log",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    tags=["rtrec", "features"],
    doc_md=__doc__,
    params={
        "end_ms": Param(None, type=["null", "integer"], description="window end; default latest"),
        "days": Param(7.0, type="number", exclusiveMinimum=0),
    },
) as dag:
    MaterializeFeaturesOperator(
        task_id="materialize_features", end_ms="{{ params.end_ms }}", days="{{ params.days }}"
    )
