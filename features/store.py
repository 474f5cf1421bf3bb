"""The only module that talks to Feast (and to the Redis keys behind the features).

``apply`` registers the definitions; the stream processor writes through
``write_user_features`` / ``write_item_features``; serving reads ``online_features`` and
``trending_items``; training may use ``historical_features`` for point-in-time joins.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from features import definitions as defs
from rtrec.config import Settings
from rtrec.errors import InvalidInput, Unavailable

logger = logging.getLogger(__name__)

TRENDING_KEY = "rtrec:trending"
"""Sorted set item -> time-decayed interaction score (Feast cannot answer top-k)."""
TRENDING_EPOCH_KEY = "rtrec:trending:epoch"
"""Reference time of the decayed scores (set once, by the first batch written)."""
TRENDING_HALF_LIFE_MS = 12 * 3_600_000
"""Scores are sums of 2^((ts - epoch)/half_life): decay without rewriting old scores.
Doubles hold ~1000 half-lives, i.e. about 500 days after the epoch."""

_stores: dict[str, Any] = {}
_lock = threading.RLock()


def _redis_available(settings: Settings) -> bool:
    try:
        import redis

        redis.Redis.from_url(settings.redis.url, socket_timeout=1).ping()
        return True
    except Exception:
        return False


def repo_config_dict(settings: Settings) -> dict[str, Any]:
    """feature_store.yaml as a dict: Redis online store (SQLite without Redis), duckdb offline."""
    repo = Path(str(settings.feast.repo_path))
    use_redis = settings.feast.online_store == "redis" and _redis_available(settings)
    host, port = settings.redis.host_port
    db = settings.redis.url.rsplit("/", 1)[-1] if settings.redis.url.count("/") >= 3 else "0"
    # skip_dedup: one write per row without reading the stored timestamp first; safe
    # because each user's features have one writer (the partition owner) whose
    # event timestamps only move forward.
    online = (
        {"type": "redis", "connection_string": f"{host}:{port},db={db or 0}", "skip_dedup": True}
        if use_redis
        else {"type": "sqlite", "path": str(repo / "online.db")}
    )
    return {
        "project": settings.feast.project,
        "provider": "local",
        "registry": str(repo / "registry.db"),
        "online_store": online,
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
    }


def _empty_sources(settings: Settings) -> None:
    """Create empty parquet behind each source so Feast can read schemas before any data."""
    specs = {
        defs.USER_STREAM_VIEW: {"user_id": "string", **_arrow(defs.user_stream_fields())},
        defs.ITEM_STREAM_VIEW: {"item_id": "string", **_arrow(defs.item_stream_fields())},
        defs.ITEM_META_VIEW: {
            "item_id": "string",
            "title": "string",
            "categories": "list<string>",
            "created_ts": "int64",
        },
        defs.USER_PROFILE_VIEW: {
            "user_id": "string",
            "age": "int64",
            "gender": "string",
            "occupation": "string",
        },
    }
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = {
        "string": pa.string(),
        "int64": pa.int64(),
        "double": pa.float64(),
        "list<string>": pa.list_(pa.string()),
    }
    for view, path in defs.offline_paths(settings.offline_dir).items():
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema(
            [(k, names[v]) for k, v in specs[view].items()]
            + [("event_timestamp", pa.timestamp("us", tz="UTC"))]
        )
        pq.write_table(schema.empty_table(), path)


def _arrow(spec: dict[str, str]) -> dict[str, str]:
    return {
        k: {
            "Array(String)": "list<string>",
            "Int64": "int64",
            "Float64": "double",
            "String": "string",
        }[v]
        for k, v in spec.items()
    }


def apply(settings: Settings) -> Path:
    """Write feature_store.yaml into the repo dir and register every definition."""
    from feast import FeatureStore, RepoConfig

    repo = Path(str(settings.feast.repo_path))
    repo.mkdir(parents=True, exist_ok=True)
    config = repo_config_dict(settings)
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _empty_sources(settings)
    store = FeatureStore(config=RepoConfig(repo_path=repo, **config))
    store.apply(defs.build(settings.offline_dir))
    with _lock:
        _stores.pop(str(repo), None)
        _writers.clear()
        _views.clear()
        _keepalive.clear()
    logger.info(
        "feature repository applied",
        extra={"repo": str(repo), "online": config["online_store"]["type"]},
    )
    return repo


def get_store(settings: Settings) -> Any:
    """The process's FeatureStore for these settings (built once; applied if needed)."""
    repo = Path(str(settings.feast.repo_path))
    key = str(repo)
    store = _stores.get(key)
    if store is not None:
        return store
    with _lock:
        store = _stores.get(key)
        if store is None:
            from feast import FeatureStore

            if not (repo / "registry.db").exists():
                apply(settings)
            store = FeatureStore(repo_path=str(repo))
            _stores[key] = store
    return store


def write_user_features(settings: Settings, frame: pd.DataFrame) -> None:
    """Upsert user stream features (one row per user; ``event_timestamp`` required)."""
    write_rows(settings, defs.USER_STREAM_VIEW, _frame_rows(frame, "user_id"))


def write_item_features(settings: Settings, frame: pd.DataFrame) -> None:
    write_rows(settings, defs.ITEM_STREAM_VIEW, _frame_rows(frame, "item_id"))


def _frame_rows(frame: pd.DataFrame, key: str) -> list[tuple[str, dict[str, Any], int]]:
    if not len(frame):
        return []
    stamps = pd.to_datetime(frame["event_timestamp"], utc=True)
    ms = (stamps.astype("int64") // 1_000_000).tolist()
    records = frame.drop(columns=["event_timestamp"]).to_dict("records")
    return [(str(r[key]), r, t) for r, t in zip(records, ms, strict=True)]


_VIEWS = {
    defs.USER_STREAM_VIEW: ("user_id", defs.user_stream_fields),
    defs.ITEM_STREAM_VIEW: ("item_id", defs.item_stream_fields),
}
_writers: dict[tuple[int, str], Any] = {}
_keepalive: dict[int, Any] = {}


def write_rows(settings: Settings, view: str, rows: list[tuple[str, dict[str, Any], int]]) -> None:
    """Upsert ``(entity id, {feature: value}, event time ms)`` rows of a stream view.

    The stream processor's sink. On Redis the rows go through
    :class:`features.online_writer.RedisViewWriter` (Feast's layout, encoded directly);
    on SQLite through the provider's ``online_write_batch`` with protos.
    """
    if not rows:
        return
    if view not in _VIEWS:
        raise InvalidInput(f"view {view!r} is not a stream view", field="view")
    key, spec = _VIEWS[view]
    store = get_store(settings)
    if store.config.online_store.type == "redis":
        writer = _writers.get((id(store), view))
        if writer is None:
            from features.online_writer import RedisViewWriter

            with _lock:
                writer = _writers.setdefault(
                    (id(store), view), RedisViewWriter(store, view, key, spec())
                )
                _keepalive[id(store)] = store  # ids stay unique while the key is cached
        writer.write(rows)
        return
    _write_protos(store, view, key, rows, spec())


def _write_protos(
    store: Any,
    view: str,
    key: str,
    rows: list[tuple[str, dict[str, Any], int]],
    fields: dict[str, str],
) -> None:
    """Provider write with protos built from the values (skips Feast's Arrow conversion)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import StringList, Value

    def value(kind: str, v: Any) -> Any:
        if kind == "Int64":
            return Value(int64_val=int(v))
        if kind == "Float64":
            return Value(double_val=float(v))
        if kind == "Array(String)":
            return Value(string_list_val=StringList(val=list(v)))
        return Value(string_val=str(v))

    data = [
        (
            EntityKey(join_keys=[key], entity_values=[Value(string_val=ident)]),
            {name: value(kind, values[name]) for name, kind in fields.items()},
            pd.Timestamp(ts_ms, unit="ms", tz="UTC").to_pydatetime(),
            None,
        )
        for ident, values, ts_ms in rows
    ]
    fv = _feature_view(store, view)
    store._get_provider().online_write_batch(store.config, fv, data, progress=None)


_views: dict[tuple[int, str], Any] = {}


def _feature_view(store: Any, name: str) -> Any:
    key = (id(store), name)
    if key not in _views:
        _views[key] = store.get_feature_view(name)
    return _views[key]


def online_features(settings: Settings, user_ids: list[str]) -> list[dict[str, Any]]:
    """Stream features of each user (``None`` values for unknown users), in order."""
    names = list(defs.user_stream_fields())
    try:
        resp = (
            get_store(settings)
            .get_online_features(
                features=[f"{defs.USER_STREAM_VIEW}:{n}" for n in names],
                entity_rows=[{"user_id": u} for u in user_ids],
            )
            .to_dict()
        )
    except Exception as exc:  # Redis down, registry missing: callers degrade, not crash
        raise Unavailable(f"online store unreachable: {exc}") from exc
    return [{n: resp[n][i] for n in names} for i in range(len(user_ids))]


def item_features(settings: Settings, item_ids: list[str]) -> list[dict[str, Any]]:
    names = list(defs.item_stream_fields())
    try:
        resp = (
            get_store(settings)
            .get_online_features(
                features=[f"{defs.ITEM_STREAM_VIEW}:{n}" for n in names],
                entity_rows=[{"item_id": i} for i in item_ids],
            )
            .to_dict()
        )
    except Exception as exc:
        raise Unavailable(f"online store unreachable: {exc}") from exc
    return [{n: resp[n][i] for n in names} for i in range(len(item_ids))]


def trending_weight(ts_ms: int, epoch_ms: int) -> float:
    """Weight of one interaction at ``ts_ms`` in the decayed trending score."""
    return math.pow(2.0, min((ts_ms - epoch_ms) / TRENDING_HALF_LIFE_MS, 1000.0))


def trending_items(settings: Settings, k: int) -> list[str]:
    """The ``k`` items with the highest time-decayed interaction score."""
    try:
        import redis

        client = redis.Redis.from_url(settings.redis.url, socket_timeout=0.5)
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
