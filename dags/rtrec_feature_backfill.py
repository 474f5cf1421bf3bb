"""``rtrec_feature_backfill``: rebuild the online store from the offline event log.

For a fresh or flushed Redis, or a new feature view: the user, item and trending stream
features are recomputed from the logged events through the stream processor's own
aggregation (``rtrec.streaming.backfill_online_store``), and Feast materializes the
catalog and profile views. Run by hand (params ``end_ms``, ``days``).

``days`` defaults to none: the whole log is replayed, because that is what the stream
built its features from. A user's ``recent_items`` and ``last_event_ms`` reach back to
their first event, an item or user not seen lately still has its row, and the trending
scores sum every event since the trending epoch; a shorter replay (``days`` set) is
faster but leaves those short of what the stream wrote.
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
        "days": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            description="replay only the last days before end_ms; default the whole log",
        ),
    },
) as dag:
    MaterializeFeaturesOperator(
        task_id="materialize_features", end_ms="{{ params.end_ms }}", days="{{ params.days }}"
    )
