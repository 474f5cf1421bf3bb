"""The in-memory data set every stage starts from: users, items and a time-ordered event log.

The three frames are a contract (see :class:`Dataset`); generators and loaders normalise
into it so that replay, training and monitoring never branch on where the data came from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rtrec.errors import InvalidInput, NotFound
from rtrec.events import EVENT_TYPES, Interaction

logger = logging.getLogger(__name__)

USER_COLUMNS = ("user_id", "age", "gender", "occupation", "signup_ts")
ITEM_COLUMNS = ("item_id", "title", "categories", "created_ts")
EVENT_COLUMNS = ("user_id", "item_id", "event_type", "ts", "value")

_SCHEMAS = {
    "users": pa.schema(
        [
            ("user_id", pa.string()),
            ("age", pa.int64()),
            ("gender", pa.string()),
            ("occupation", pa.string()),
            ("signup_ts", pa.int64()),
        ]
    ),
    "items": pa.schema(
        [
            ("item_id", pa.string()),
            ("title", pa.string()),
            ("categories", pa.list_(pa.string())),
            ("created_ts", pa.int64()),
        ]
    ),
    "events": pa.schema(
        [
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("event_type", pa.string()),
            ("ts", pa.int64()),
            ("value", pa.float64()),
        ]
    ),
}
_META_FILE = "meta.json"


def _require_columns(name: str, frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInput(f"{name} frame lacks column(s) {missing}", field=f"{name}.{missing[0]}")


def _normalise(users: pd.DataFrame, items: pd.DataFrame, events: pd.DataFrame) -> tuple:
    """Cast the frames to the contract's dtypes, keep only contract columns, sort events."""
    _require_columns("users", users, USER_COLUMNS)
    _require_columns("items", items, ITEM_COLUMNS)
    _require_columns("events", events, EVENT_COLUMNS)
    users = users.loc[:, list(USER_COLUMNS)].reset_index(drop=True)
    users = users.astype({"user_id": object, "age": "Int64", "signup_ts": np.int64})
    for col in ("gender", "occupation"):
        users[col] = users[col].astype(object).where(users[col].notna(), None)
    items = items.loc[:, list(ITEM_COLUMNS)].reset_index(drop=True)
    items = items.astype({"item_id": object, "title": object, "created_ts": np.int64})
    items["categories"] = [list(c) if c is not None else [] for c in items["categories"]]
    events = events.loc[:, list(EVENT_COLUMNS)]
    events = events.astype(
        {"user_id": object, "item_id": object, "event_type": object, "ts": np.int64}
    )
    events["value"] = events["value"].astype(np.float64)
    ts = events["ts"].to_numpy()
    if len(ts) > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
        events = events.iloc[np.argsort(ts, kind="stable")]
    return users, items, events.reset_index(drop=True)


@dataclass
class Dataset:
    """Users, items and events, normalised to one schema.

    - ``users``: user_id:str, age:Int64 (nullable), gender:str|None, occupation:str|None,
      signup_ts:int64 (ms)
    - ``items``: item_id:str, title:str, categories:list[str], created_ts:int64 (ms)
    - ``events``: user_id:str, item_id:str, event_type:str (one of ``EVENT_TYPES``),
      ts:int64 (ms since epoch, UTC), value:float64 (NaN when none); sorted by ts (stable)

    ``meta`` carries provenance (source, generator config, shift time) so monitoring can
    tell where a known distribution change sits.
    """

    users: pd.DataFrame
    items: pd.DataFrame
    events: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.users, self.items, self.events = _normalise(self.users, self.items, self.events)

    def validate(self) -> Dataset:
        """Check the invariants other stages rely on; raise InvalidInput naming the culprit."""
        for name, frame, key in (
            ("users", self.users, "user_id"),
            ("items", self.items, "item_id"),
        ):
            dup = frame[key][frame[key].duplicated()]
            if len(dup):
                raise InvalidInput(f"{name}: duplicate {key} {dup.iloc[0]!r}", field=key)
        ev = self.events
        bad_type = ~ev["event_type"].isin(EVENT_TYPES)
        if bad_type.any():
            row = int(np.argmax(bad_type.to_numpy()))
            raise InvalidInput(
                f"events row {row}: unknown event_type {ev['event_type'].iloc[row]!r}",
                field="event_type",
            )
        if len(ev) and int(ev["ts"].min()) < 0:
            raise InvalidInput("events: ts before the epoch", field="ts")
        for key, known in (("user_id", self.users["user_id"]), ("item_id", self.items["item_id"])):
            unknown = ~ev[key].isin(known)
            if unknown.any():
                row = int(np.argmax(unknown.to_numpy()))
                raise InvalidInput(
                    f"events row {row}: {key} {ev[key].iloc[row]!r} is not in the table",
                    field=key,
                )
        no_value = (ev["event_type"] == "rating") & ev["value"].isna()
        if no_value.any():
            row = int(np.argmax(no_value.to_numpy()))
            raise InvalidInput(f"events row {row}: rating without a value", field="value")
        return self

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``users/items/events.parquet`` and ``meta.json`` (plain int64 ms, no datetimes)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("users", "items", "events"):
            frame = getattr(self, name)
            table = pa.Table.from_pandas(frame, schema=_SCHEMAS[name], preserve_index=False)
            pq.write_table(table, out / f"{name}.parquet")
        (out / _META_FILE).write_text(json.dumps(self.meta, indent=2, default=str))
        logger.info("saved dataset to %s (%d events)", out, len(self.events))
        return out

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read a directory written by :meth:`save`."""
        src = Path(path)
        frames = {}
        for name in ("users", "items", "events"):
            file = src / f"{name}.parquet"
            if not file.is_file():
                raise NotFound(f"dataset file {file} does not exist")
            frames[name] = pq.read_table(file).to_pandas()
        meta_file = src / _META_FILE
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        return cls(frames["users"], frames["items"], frames["events"], meta).validate()

    @staticmethod
    def is_saved_dataset(path: str | Path) -> bool:
        p = Path(path)
        return all((p / f"{n}.parquet").is_file() for n in ("users", "items", "events"))

    # ---- iteration ---------------------------------------------------------------------
    def iter_interactions(self) -> Iterator[Interaction]:
        """Validated contract objects, in time order (slow path: tests, small replays)."""
        ev = self.events
        for user, item, etype, ts, value in zip(
            ev["user_id"].tolist(),
            ev["item_id"].tolist(),
            ev["event_type"].tolist(),
            ev["ts"].tolist(),
            ev["value"].tolist(),
            strict=True,
        ):
            yield Interaction(
                user_id=user,
                item_id=item,
                event_type=etype,
                ts=ts,
                value=None if value != value else value,  # NaN -> None
            )

    def iter_event_json(self, *, chunk_size: int = 65_536) -> Iterator[bytes]:
        """Wire bytes per event, in time order, without a pydantic object per event.

        This feeds the Kafka producer at >= 50k events/s; ids are JSON-escaped once per
        distinct id and the rest is string formatting. Output parses with ``parse_event``.
        """
        for _key, payload in self.iter_keyed_event_json(chunk_size=chunk_size):
            yield payload

    def iter_keyed_event_json(self, *, chunk_size: int = 65_536) -> Iterator[tuple[bytes, bytes]]:
        """(user_id bytes, event JSON bytes) pairs: the producer keys by user for ordering."""
        ev = self.events
        user_codes, user_uniques = pd.factorize(ev["user_id"])
        item_codes, item_uniques = pd.factorize(ev["item_id"])
        user_json = [json.dumps(u) for u in user_uniques]
        user_keys = [str(u).encode() for u in user_uniques]
        item_json = [json.dumps(i) for i in item_uniques]
        types = ev["event_type"].to_numpy()
        ts = ev["ts"].to_numpy()
        values = ev["value"].to_numpy()
        for start in range(0, len(ev), chunk_size):
            stop = start + chunk_size
            for uc, ic, etype, t, v in zip(
                user_codes[start:stop].tolist(),
                item_codes[start:stop].tolist(),
                types[start:stop].tolist(),
                ts[start:stop].tolist(),
                values[start:stop].tolist(),
                strict=True,
            ):
                head = f'{{"user_id":{user_json[uc]},"item_id":{item_json[ic]},"event_type":"'
                if v != v:  # NaN: no value on the wire
                    body = f'{head}{etype}","ts":{t}}}'
                else:
                    body = f'{head}{etype}","ts":{t},"value":{v!r}}}'
                yield user_keys[uc], body.encode()

    # ---- views -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Headline figures for logs, the CLI and reports."""
        ev = self.events
        n = len(ev)
        item_counts = ev["item_id"].value_counts().to_numpy()
        top = max(1, len(self.items) // 100)
        per_user = ev.groupby("user_id", sort=False).size() if n else pd.Series(dtype=int)
        return {
            "n_users": len(self.users),
            "n_items": len(self.items),
            "n_events": n,
            "n_active_users": int(ev["user_id"].nunique()),
            "n_active_items": int(ev["item_id"].nunique()),
            "n_categories": len({c for cats in self.items["categories"] for c in cats}),
            "event_types": {k: int(v) for k, v in ev["event_type"].value_counts().items()},
            "start_ts": int(ev["ts"].iloc[0]) if n else None,
            "end_ts": int(ev["ts"].iloc[-1]) if n else None,
            "days": round((int(ev["ts"].iloc[-1]) - int(ev["ts"].iloc[0])) / 86_400_000, 2)
            if n
            else 0.0,
            "events_per_active_user": round(float(per_user.mean()), 2) if n else 0.0,
            "top1pct_item_share": round(float(item_counts[:top].sum() / n), 4) if n else 0.0,
            "source": self.meta.get("source"),
        }

    def time_slice(self, start_ts: int | None = None, end_ts: int | None = None) -> Dataset:
        """Events with ``start_ts <= ts < end_ts`` (either bound open when None).

        Users and items keep those known by ``end_ts`` (signed up / created before it)
        plus any the sliced events touch, so a slice is a self-consistent data set.
        """
        ts = self.events["ts"].to_numpy()
        lo = 0 if start_ts is None else int(np.searchsorted(ts, start_ts, side="left"))
        hi = len(ts) if end_ts is None else int(np.searchsorted(ts, end_ts, side="left"))
        events = self.events.iloc[lo:hi]
        users, items = self.users, self.items
        if end_ts is not None:
            users = users[(users["signup_ts"] < end_ts) | users["user_id"].isin(events["user_id"])]
            items = items[(items["created_ts"] < end_ts) | items["item_id"].isin(events["item_id"])]
        meta = {**self.meta, "slice": [start_ts, end_ts]}
        return Dataset(users.copy(), items.copy(), events.copy(), meta)


def load_dataset(source: str | Path, **overrides: Any) -> Dataset:
    """One entry point for every data source.

    ``source`` is ``"synthetic"`` (a month of events), ``"synthetic:small"`` (tests and
    ``--quick`` demos), a directory written by :meth:`Dataset.save`, or a MovieLens
    directory or ratings file (format autodetected). ``overrides`` are
    :class:`SyntheticConfig` fields and only apply to synthetic sources.
    """
    from rtrec.data.movielens import load_movielens
    from rtrec.data.synthetic import SyntheticConfig, generate

    text = str(source)
    if text == "synthetic" or text.startswith("synthetic:"):
        preset = text.partition(":")[2] or "default"
        if preset == "small":
            cfg = SyntheticConfig.small(**overrides)
        elif preset == "default":
            cfg = SyntheticConfig(**overrides)
        else:
            raise InvalidInput(
                f"unknown synthetic preset {preset!r}; expected 'small' or 'default'",
                field="source",
            )
        return generate(cfg)
    if overrides:
        raise InvalidInput(
            f"options {sorted(overrides)} only apply to synthetic sources, not {text!r}",
            field="source",
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise NotFound(f"data source {text!r} is neither 'synthetic[:small]' nor an existing path")
    if path.is_dir() and Dataset.is_saved_dataset(path):
        return Dataset.load(path)
    return load_movielens(path)
