"""Feast ``materialize`` of the batch views: the catalog and profile parquet into Redis.

Here, with the rest of the store, because only the features stage talks to Feast; the
backfill DAG step calls it after rebuilding the stream views.
"""

from __future__ import annotations

from datetime import UTC, datetime

from rtrec.features.definitions import ITEM_META_VIEW, USER_PROFILE_VIEW, offline_paths
from rtrec.features.store import get_store

from rtrec.config import Settings

BATCH_VIEWS = (ITEM_META_VIEW, USER_PROFILE_VIEW)
"""The views Feast loads from parquet (the stream views are written by the processor)."""

_START = datetime(1970, 1, 2, tzinfo=UTC)
"""Earliest event time materialized: every row the parquet holds (a day after the epoch,
clear of time-zone edge cases at zero)."""


def materialize_batch_views(settings: Settings, end_ms: int) -> list[str]:
    """Load the batch views whose parquet exists into the online store, rows up to
    ``end_ms``; returns the views loaded (none when no parquet was written yet)."""
    paths = offline_paths(settings.offline_dir)
    views = [v for v in BATCH_VIEWS if paths[v].is_file()]
    if views:
        get_store(settings).materialize(
            start_date=_START,
            end_date=datetime.fromtimestamp(end_ms / 1000, tz=UTC),
            feature_views=views,
        )
    return views
