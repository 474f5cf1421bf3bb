"""The Feast feature store: registration, reads, and the Redis keys behind the features.

``apply`` registers the definitions; serving reads ``online_features`` and
``trending_items``; training reads ``historical_user_rows`` (Feast's point-in-time join,
rows shaped as the online read's) for the ranker's training states.
The write side (the stream processor's sink) is ``rtrec.features.sink``; the repository's
files and its Redis connection settings are ``rtrec.features.repo``. No other package
imports Feast.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

import pandas as pd
from rtrec.features import definitions as defs
from rtrec.features.repo import check_redis, repo_config_dict, write_repo

from rtrec.config import Settings
from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)

TRENDING_KEY = "{rtrec:item}:trending"
"""Sorted set item -> time-decayed interaction score (Feast cannot answer top-k). Its hash
tag is the stream processor's item slot: the item buckets it updates with this set in one
script live in the same Redis Cluster slot (``rtrec.streaming.state_layout``)."""
TRENDING_EPOCH_KEY = "rtrec:trending:epoch"
"""Reference time of the decayed scores (set once, by the first batch written)."""
TRENDING_HALF_LIFE_MS = 12 * 3_600_000
"""Scores are sums of 2^((ts - epoch)/half_life): decay without rewriting old scores.
Doubles hold ~1000 half-lives, i.e. about 500 days after the epoch."""

_stores: dict[str, Any] = {}
_lock = threading.RLock()


def apply(settings: Settings) -> Path:
    """Write feature_store.yaml into the repo dir and register every definition.

    With Redis as the online store, Redis must answer first: :class:`Unavailable`
    (naming the URL without its password) before anything is written, never a
    different store.
    """
    from feast import FeatureStore, RepoConfig

    config = repo_config_dict(settings)
    if config["online_store"]["type"] == "redis":
        check_redis(settings)
    repo = write_repo(settings, config)
    store = FeatureStore(repo_path=str(repo), config=RepoConfig(repo_path=repo, **config))
    store.apply(defs.build(settings.offline_dir))
    from rtrec.features import sink

    with _lock:
        _stores.pop(str(repo), None)
        sink.reset()
    logger.info(
        "feature repository applied",
        extra={"repo": str(repo), "online": config["online_store"]["type"]},
    )
    return repo


def get_store(settings: Settings) -> Any:
    """The process's FeatureStore for these settings (built once; applied if needed).

    Built from the settings, not from feature_store.yaml: a file written under other
    settings (another Redis, another store type) never decides where features go.
    """
    repo = Path(str(settings.feast.repo_path))
    key = str(repo)
    store = _stores.get(key)
    if store is not None:
        return store
    with _lock:
        store = _stores.get(key)
        if store is None:
            from feast import FeatureStore, RepoConfig

            if not (repo / "registry.db").exists():
                apply(settings)
            config = repo_config_dict(settings)
            store = FeatureStore(repo_path=str(repo), config=RepoConfig(repo_path=repo, **config))
            _stores[key] = store
    return store


def online_features(settings: Settings, user_ids: list[str]) -> list[dict[str, Any]]:
    """Stream features of each user (``None`` values for unknown users), in order."""
    return _read_view(
        settings, defs.USER_STREAM_VIEW, "user_id", defs.user_stream_fields(), user_ids
    )


def item_features(settings: Settings, item_ids: list[str]) -> list[dict[str, Any]]:
    """Stream features of each item (``None`` values for unknown items), in order."""
    return _read_view(
        settings, defs.ITEM_STREAM_VIEW, "item_id", defs.item_stream_fields(), item_ids
    )


def _read_view(
    settings: Settings, view: str, key: str, fields: dict[str, str], ids: list[str]
) -> list[dict[str, Any]]:
    names = list(fields)
    try:
        resp = (
            get_store(settings)
            .get_online_features(
                features=[f"{view}:{n}" for n in names],
                entity_rows=[{key: i} for i in ids],
            )
            .to_dict()
        )
    except Exception as exc:  # Redis down, registry missing: callers degrade, not crash
        raise Unavailable(f"online store unreachable: {exc}") from exc
    return [{n: resp[n][i] for n in names} for i in range(len(ids))]


_clients: dict[str, Any] = {}


def _redis_client(settings: Settings) -> Any:
    """One client (connection pool) per URL: a new one per call costs a TCP connect."""
    url = settings.redis.url
    client = _clients.get(url)
    if client is None:
        from rtrec.redis_clients import redis_client

        client = _clients.setdefault(url, redis_client(settings, socket_timeout=0.5))
    return client


def trending_weight(ts_ms: int, epoch_ms: int) -> float:
    """Weight of one interaction at ``ts_ms`` in the decayed trending score."""
    return math.pow(2.0, min((ts_ms - epoch_ms) / TRENDING_HALF_LIFE_MS, 1000.0))


def trending_items(settings: Settings, k: int) -> list[str]:
    """The ``k`` items with the highest time-decayed interaction score."""
    try:
        client = _redis_client(settings)
        return [m.decode() for m in client.zrevrange(TRENDING_KEY, 0, k - 1)]
    except Exception as exc:
        raise Unavailable(f"trending items unavailable: {exc}") from exc


def historical_features(
    settings: Settings, entity_df: pd.DataFrame, features: list[str]
) -> pd.DataFrame:
    """Point-in-time join of ``features`` (``view:name``) onto ``entity_df``
    (entity keys + ``event_timestamp``)."""
    job = get_store(settings).get_historical_features(entity_df=entity_df, features=features)
    return job.to_df()


def has_offline_user_rows(settings: Settings) -> bool:
    """Whether the stream processor has written user stream rows to the offline store
    (``apply`` lays an empty part there for the schema: a file is not yet a row)."""
    import pyarrow.parquet as pq

    directory = defs.offline_paths(settings.offline_dir)[defs.USER_STREAM_VIEW].parent
    if not directory.is_dir():
        return False
    return any(pq.read_metadata(p).num_rows > 0 for p in sorted(directory.glob("*.parquet")))


def historical_user_rows(
    settings: Settings, user_ids: list[str], at_ms: list[int]
) -> list[dict[str, Any]]:
    """Each user's stream row as it stood at ``at_ms`` (the same position), shaped as
    :func:`online_features` returns a row, so one function turns either into a state.

    Feast's point-in-time join: the user's latest offline row stamped at or before
    ``at_ms`` (a row is stamped with the user's latest event, so a row at or before T
    holds events up to T only). Rows come back as pandas (integers as floats, NaN where
    no row; lists as arrays); they are turned back into the online read's values: ints,
    lists of str, None for every field of a user without a row.
    """
    if len(user_ids) != len(at_ms):
        raise ValueError(f"{len(user_ids)} users but {len(at_ms)} times")
    fields = defs.user_stream_fields()
    stamps = pd.to_datetime(pd.Series(at_ms, dtype="int64"), unit="ms", utc=True)
    entity = pd.DataFrame({"user_id": [str(u) for u in user_ids], "event_timestamp": stamps})
    entity["_row"] = range(len(entity))  # the join's output order is not the input's
    out = historical_features(
        settings, entity, [f"{defs.USER_STREAM_VIEW}:{n}" for n in fields]
    ).sort_values("_row")
    if len(out) != len(entity) or out["_row"].tolist() != entity["_row"].tolist():
        raise Unavailable(f"historical retrieval returned {len(out)} rows for {len(entity)}")
    columns = {n: out[n].tolist() for n in fields}
    return [{n: _online_value(fields[n], columns[n][i]) for n in fields} for i in range(len(out))]


def _online_value(kind: str, value: Any) -> Any:
    """A historical value as the online read gives it (None where the row is missing)."""
    if value is None or (not hasattr(value, "__len__") and pd.isna(value)):
        return None
    if kind == "Array(String)":
        return [str(v) for v in value]
    if kind == "Int64":
        return int(value)
    if kind == "Float64":
        return float(value)
    return value


def write_offline_metadata(settings: Settings, items: pd.DataFrame, users: pd.DataFrame) -> None:
    """Catalog and profiles as the batch views' parquet (timestamps in µs for duckdb)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = defs.offline_paths(settings.offline_dir)
    items_out = items[["item_id", "title", "categories", "created_ts"]].copy()
    items_out["event_timestamp"] = pd.to_datetime(items_out["created_ts"], unit="ms", utc=True)
    users_out = users[["user_id", "age", "gender", "occupation"]].copy()
    users_out["event_timestamp"] = pd.to_datetime(users["signup_ts"], unit="ms", utc=True)
    for frame, view in ((items_out, defs.ITEM_META_VIEW), (users_out, defs.USER_PROFILE_VIEW)):
        paths[view].parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pandas(frame, preserve_index=False),
            paths[view],
            coerce_timestamps="us",
            allow_truncated_timestamps=True,
        )
