"""Features: the Feast repository and the only code that talks to Feast.

Public API::

    apply(settings)                          # register definitions (rtrec features apply)
    online_features(settings, user_ids)      # stream features per user (synchronous)
    OnlineReader.for_users(settings)         # serving: the same read, awaited (asyncio Redis)
    item_features(settings, item_ids)
    trending_items(settings, k)              # cold-user fallback
    write_rows(settings, view, rows)         # the stream processor's sink
    write_user_features / write_item_features  # the same from DataFrames
    historical_features(settings, entity_df, features)
    historical_user_rows(settings, user_ids, at_ms)  # user stream rows as of each time,
                                                     # shaped as online_features' rows
    has_offline_user_rows(settings)          # has the stream written any offline rows?
    materialize_batch_views(settings, end_ms)  # Feast materialize of catalog and profiles
    WINDOWS, RECENT_ITEMS, *_VIEW, offline_paths(dir)  # the definitions writers share

It sits below streaming: the stream processor computes features and writes them through
this API. Imports are lazy (PEP 562), so reading a constant does not load Feast.
"""

from rtrec.lazy import lazy_exports

_EXPORTS = {
    "ITEM_META_VIEW": "rtrec.features.definitions",
    "ITEM_STREAM_VIEW": "rtrec.features.definitions",
    "RECENT_ITEMS": "rtrec.features.definitions",
    "USER_PROFILE_VIEW": "rtrec.features.definitions",
    "USER_STREAM_VIEW": "rtrec.features.definitions",
    "WINDOWS": "rtrec.features.definitions",
    "count_names": "rtrec.features.definitions",
    "offline_paths": "rtrec.features.definitions",
    "materialize_batch_views": "rtrec.features.materialize",
    "OnlineReader": "rtrec.features.online_reader",
    "append_offline_rows": "rtrec.features.sink",
    "prepare_rows": "rtrec.features.sink",
    "write_item_features": "rtrec.features.sink",
    "write_prepared": "rtrec.features.sink",
    "write_rows": "rtrec.features.sink",
    "write_user_features": "rtrec.features.sink",
    "TRENDING_EPOCH_KEY": "rtrec.features.store",
    "TRENDING_KEY": "rtrec.features.store",
    "apply": "rtrec.features.store",
    "get_store": "rtrec.features.store",
    "historical_features": "rtrec.features.store",
    "historical_user_rows": "rtrec.features.store",
    "has_offline_user_rows": "rtrec.features.store",
    "item_features": "rtrec.features.store",
    "online_features": "rtrec.features.store",
    "trending_items": "rtrec.features.store",
    "trending_weight": "rtrec.features.store",
    "write_offline_metadata": "rtrec.features.store",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
