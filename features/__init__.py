"""Features: the Feast repository and the only code that talks to Feast.

Public API::

    apply(settings)                          # register definitions (rtrec features apply)
    online_features(settings, user_ids)      # serving: stream features per user
    item_features(settings, item_ids)
    trending_items(settings, k)              # cold-user fallback
    write_rows(settings, view, rows)         # the stream processor's sink
    write_user_features / write_item_features  # the same from DataFrames
    historical_features(settings, entity_df, features)
"""

from rtrec.features.definitions import RECENT_ITEMS, WINDOWS, count_names
from rtrec.features.sink import (
    append_offline_rows,
    prepare_rows,
    write_item_features,
    write_prepared,
    write_rows,
    write_user_features,
)
from rtrec.features.store import (
    TRENDING_EPOCH_KEY,
    TRENDING_KEY,
    apply,
    get_store,
    historical_features,
    item_features,
    online_features,
    trending_items,
    trending_weight,
    write_offline_metadata,
)

__all__ = [
    "RECENT_ITEMS",
    "TRENDING_EPOCH_KEY",
    "TRENDING_KEY",
    "WINDOWS",
    "append_offline_rows",
    "apply",
    "count_names",
    "get_store",
    "historical_features",
    "item_features",
    "online_features",
    "prepare_rows",
    "trending_items",
    "trending_weight",
    "write_item_features",
    "write_offline_metadata",
    "write_prepared",
    "write_rows",
    "write_user_features",
]
