"""The write side of the stream views: online (Feast's Redis layout) and offline parquet.

The stream processor's sink. On Redis the rows go through
:class:`rtrec.features.online_writer.RedisViewWriter` (Feast's own key and value encoding,
without its per-value conversions); on SQLite through the provider's
``online_write_batch`` with protos.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from rtrec.features import definitions as defs
from rtrec.features.store import _lock, get_store

from rtrec.config import Settings
from rtrec.errors import InvalidInput

logger = logging.getLogger(__name__)

Row = tuple[str, dict[str, Any], int]
"""(entity id, {feature: value}, event time ms)."""

_VIEWS = {
    defs.USER_STREAM_VIEW: ("user_id", defs.user_stream_fields),
    defs.ITEM_STREAM_VIEW: ("item_id", defs.item_stream_fields),
}
_writers: dict[tuple[int, str], Any] = {}
_keepalive: dict[int, Any] = {}
_views: dict[tuple[int, str], Any] = {}


def reset() -> None:
    """Forget cached writers (``apply`` replaced the FeatureStore)."""
    _writers.clear()
    _views.clear()
    _keepalive.clear()


def _view_spec(view: str) -> tuple[str, dict[str, str]]:
    if view not in _VIEWS:
        raise InvalidInput(f"view {view!r} is not a stream view", field="view")
    key, spec = _VIEWS[view]
    return key, spec()


def write_user_features(settings: Settings, frame: pd.DataFrame) -> None:
    """Upsert user stream features (one row per user; ``event_timestamp`` required)."""
    write_rows(settings, defs.USER_STREAM_VIEW, _frame_rows(frame, "user_id"))


def write_item_features(settings: Settings, frame: pd.DataFrame) -> None:
    write_rows(settings, defs.ITEM_STREAM_VIEW, _frame_rows(frame, "item_id"))


def _frame_rows(frame: pd.DataFrame, key: str) -> list[Row]:
    if not len(frame):
        return []
    stamps = pd.to_datetime(frame["event_timestamp"], utc=True)
    ms = (stamps.astype("int64") // 1_000_000).tolist()
    records = frame.drop(columns=["event_timestamp"]).to_dict("records")
    return [(str(r[key]), r, t) for r, t in zip(records, ms, strict=True)]


def write_rows(settings: Settings, view: str, rows: list[Row]) -> None:
    """Upsert rows of a stream view into the online store."""
    if not rows:
        return
    key, fields = _view_spec(view)
    store = get_store(settings)
    if store.config.online_store.type == "redis":
        _redis_writer(store, view).write(rows)
        return
    _write_protos(store, view, key, rows, fields)


def _redis_writer(store: Any, view: str) -> Any:
    writer = _writers.get((id(store), view))
    if writer is None:
        from rtrec.features.online_writer import RedisViewWriter

        key, spec = _VIEWS[view]
        with _lock:
            writer = _writers.setdefault(
                (id(store), view), RedisViewWriter(store, view, key, spec())
            )
            _keepalive[id(store)] = store  # ids stay unique while the key is cached
    return writer


def prepare_rows(settings: Settings, view: str, rows: list[Row]) -> tuple[str, Any]:
    """Encode rows for :func:`write_prepared` ahead of time (e.g. while Redis is busy)."""
    _view_spec(view)
    store = get_store(settings)
    if rows and store.config.online_store.type == "redis":
        return view, _redis_writer(store, view).prepare(rows)
    return view, rows


def write_prepared(settings: Settings, prepared: list[tuple[str, Any]]) -> None:
    """Write what :func:`prepare_rows` encoded, every view in one round trip on Redis."""
    packed = [p for _, p in prepared if isinstance(p, tuple)]
    if packed:
        from rtrec.features.online_writer import send_packed

        view = next(v for v, p in prepared if isinstance(p, tuple))
        send_packed(_redis_writer(get_store(settings), view).client, packed)
    for view, rows in prepared:
        if isinstance(rows, list) and rows:
            write_rows(settings, view, rows)


def _write_protos(
    store: Any,
    view: str,
    key: str,
    rows: list[Row],
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


def append_offline_rows(settings: Settings, view: str, rows: list[Row]) -> Path | None:
    """Append stream-view rows (entity id, values, event time ms) to the view's offline
    source, one parquet file per call, so ``historical_features`` sees them point in time.

    The stream processor calls this at each offline flush with every row it wrote online
    since the last one (``rtrec.streaming.offline.OfflineSink``).
    """
    if not rows:
        return None
    import time
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    key, fields = _view_spec(view)
    kinds = {"Array(String)": pa.list_(pa.string()), "Int64": pa.int64(), "Float64": pa.float64()}
    columns = {key: pa.array([ident for ident, _, _ in rows], pa.string())}
    for name, kind in fields.items():
        columns[name] = pa.array([v[name] for _, v, _ in rows], kinds.get(kind, pa.string()))
    columns["event_timestamp"] = pa.array([t for _, _, t in rows], pa.int64()).cast(
        pa.timestamp("ms", tz="UTC")
    )
    directory = defs.offline_paths(settings.offline_dir)[view].parent
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.table(columns), tmp, coerce_timestamps="us", allow_truncated_timestamps=True)
    tmp.rename(path)
    return path


def _feature_view(store: Any, name: str) -> Any:
    key = (id(store), name)
    if key not in _views:
        _views[key] = store.get_feature_view(name)
    return _views[key]
