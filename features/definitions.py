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
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
    from feast.types import Array, Float64, Int64, String
    from feast.value_type import ValueType

    types = {"Array(String)": Array(String), "Int64": Int64, "Float64": Float64, "String": String}
    paths = offline_paths(offline_dir)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)

    def file_source(name: str) -> Any:
        return FileSource(
            name=f"{name}_source", path=str(paths[name]), timestamp_field="event_timestamp"
        )

    def fields(spec: dict[str, str]) -> list[Any]:
        return [Field(name=k, dtype=types[v]) for k, v in spec.items()]

    user_push = PushSource(name="user_stream_push", batch_source=file_source(USER_STREAM_VIEW))
    item_push = PushSource(name="item_stream_push", batch_source=file_source(ITEM_STREAM_VIEW))
    user_stream = FeatureView(
        name=USER_STREAM_VIEW,
        entities=[user],
        schema=fields(user_stream_fields()),
        source=user_push,
        ttl=timedelta(days=30),
        online=True,
    )
    item_stream = FeatureView(
        name=ITEM_STREAM_VIEW,
        entities=[item],
        schema=fields(item_stream_fields()),
        source=item_push,
        ttl=timedelta(days=30),
        online=True,
    )
    item_meta = FeatureView(
        name=ITEM_META_VIEW,
        entities=[item],
        schema=fields({"title": "String", "categories": "Array(String)", "created_ts": "Int64"}),
        source=file_source(ITEM_META_VIEW),
        ttl=timedelta(days=3650),
        online=True,
    )
    user_profile = FeatureView(
        name=USER_PROFILE_VIEW,
        entities=[user],
        schema=fields({"age": "Int64", "gender": "String", "occupation": "String"}),
        source=file_source(USER_PROFILE_VIEW),
        ttl=timedelta(days=3650),
        online=True,
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
