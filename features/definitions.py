"""Feast objects of the platform: entities, sources, feature views, feature services.

Built by a function of the settings (absolute paths: duckdb resolves
relative FileSource paths against the process's cwd), registered by
:func:`rtrec.features.store.apply`. Stream features are written by the stream processor
(``streaming/``) through these views; batch views read the catalog and user profiles.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from rtrec.events import EVENT_TYPES

WINDOWS = {"1h": 3_600_000, "24h": 86_400_000, "7d": 7 * 86_400_000}
"""Sliding windows of the count features (name -> ms), as in the training sets."""
RECENT_ITEMS = 200
"""Items kept in ``recent_items`` (newest first): the user tower's history, as long as the
longest a model reads (the user-bag preset, ``rtrec.training.trainer.BAG_HISTORY``)."""

USER_STREAM_VIEW = "user_stream"
ITEM_STREAM_VIEW = "item_stream"
ITEM_META_VIEW = "item_metadata"
USER_PROFILE_VIEW = "user_profile"


def count_names() -> list[str]:
    """``cnt_<type>_<window>``: the same names the Spark training sets use."""
    return [f"cnt_{t}_{w}" for t in EVENT_TYPES for w in WINDOWS]


def user_stream_fields() -> dict[str, str]:
    """Feature name -> Feast type name, for the user stream view."""
    return {
        "recent_items": "Array(String)",
        **{name: "Int64" for name in count_names()},
        "last_event_ms": "Int64",
        "written_ms": "Int64",
    }


def item_stream_fields() -> dict[str, str]:
    return {
        **{f"item_cnt_{w}": "Int64" for w in WINDOWS},
        "trending_score": "Float64",
        "written_ms": "Int64",
    }


def offline_paths(offline_dir: Path) -> dict[str, Path]:
    """Parquet behind each source (stream views' sinks and the batch views' data)."""
    base = offline_dir / "feast"
    return {
        # Stream views: one file per processor flush, read as a glob by duckdb.
        USER_STREAM_VIEW: base / "user_stream" / "*.parquet",
        ITEM_STREAM_VIEW: base / "item_stream" / "*.parquet",
        ITEM_META_VIEW: base / "items.parquet",
        USER_PROFILE_VIEW: base / "users.parquet",
    }


def build(offline_dir: Path) -> list[Any]:
    """Every Feast object to register, for one offline directory."""
    from feast import Entity, FeatureService, PushSource
    from feast.value_type import ValueType

    paths = offline_paths(offline_dir)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)
    user_push = PushSource(
        name="user_stream_push", batch_source=_file_source(paths, USER_STREAM_VIEW)
    )
    item_push = PushSource(
        name="item_stream_push", batch_source=_file_source(paths, ITEM_STREAM_VIEW)
    )
    # No TTL on the user view: serving reads a user's row however old it is (no Redis key
    # TTL; neither Feast's read nor ``OnlineReader`` checks the view's TTL), so the offline
    # point-in-time join must not drop it either, or training would see a cold user where
    # a request sees its history (Feast: a TTL of 0 never expires).
    user_stream = _view(USER_STREAM_VIEW, user, user_stream_fields(), user_push, ttl_days=0)
    item_stream = _view(ITEM_STREAM_VIEW, item, item_stream_fields(), item_push, ttl_days=30)
    item_meta = _view(
        ITEM_META_VIEW,
        item,
        {"title": "String", "categories": "Array(String)", "created_ts": "Int64"},
        _file_source(paths, ITEM_META_VIEW),
        ttl_days=3650,
    )
    user_profile = _view(
        USER_PROFILE_VIEW,
        user,
        {"age": "Int64", "gender": "String", "occupation": "String"},
        _file_source(paths, USER_PROFILE_VIEW),
        ttl_days=3650,
    )
    serving = FeatureService(name="serving", features=[user_stream])
    training = FeatureService(name="training", features=[user_stream, user_profile, item_meta])
    return [
        user,
        item,
        user_push,
        item_push,
        user_stream,
        item_stream,
        item_meta,
        user_profile,
        serving,
        training,
    ]


def _file_source(paths: dict[str, Path], name: str) -> Any:
    """The parquet source behind view ``name`` (its rows stamped ``event_timestamp``)."""
    from feast import FileSource

    return FileSource(
        name=f"{name}_source", path=str(paths[name]), timestamp_field="event_timestamp"
    )


def _view(name: str, entity: Any, spec: dict[str, str], source: Any, *, ttl_days: int) -> Any:
    """An online feature view of ``entity`` with the fields of ``spec`` (name -> type name)."""
    from feast import FeatureView, Field
    from feast.types import Array, Float64, Int64, String

    types = {"Array(String)": Array(String), "Int64": Int64, "Float64": Float64, "String": String}
    return FeatureView(
        name=name,
        entities=[entity],
        schema=[Field(name=k, dtype=types[v]) for k, v in spec.items()],
        source=source,
        ttl=timedelta(days=ttl_days),
        online=True,
    )
