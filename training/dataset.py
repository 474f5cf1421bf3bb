"""Point-in-time training sets with Spark: every example sees only what happened before it.

The job reads the offline event log (the append-only parquet the stream processor writes,
or one written from a :class:`rtrec.data.Dataset` by :func:`write_event_log`) and turns each
interaction into one example carrying the user's state *strictly before* its timestamp:

- ``hist_item_ids``: the last ``history_len`` item ids, most recent first;
- ``cnt_<event_type>_<window>``: the user's events of that type in ``[ts - window, ts)``;
- ``n_prev_events`` and ``secs_since_prev`` (null for a user's first event).

Events sharing a timestamp are grouped first and the windows run over those groups
(``rangeBetween(-w, -1)`` / rows before the group), so simultaneous events never see each
other and nothing at or after ``ts`` can reach an example: no leakage by construction, the
same values Feast's point-in-time join over the streaming feature views would give.

Splits: ``temporal`` cuts the timeline globally, in time order train | validation | gate |
test (train on the past, judge on the future, as a real-time system lives); ``random``
splits each user's events at random (the protocol of the published MovieLens tables, for
comparison only). Validation serves every selection step (objective, epochs, prior,
baseline hyperparameters); the gate slice is touched by none of them and is where the
promotion gate scores challenger and champion; test exists where a protocol asks for one.
Empty splits are written too (with the schema), so every split can always be read. What
the splits are and how they are read: ``rtrec.training.sets``; the Spark session:
``rtrec.training.spark``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from rtrec.training.sets import (
    META_FILE,
    ORDER,
    SPLITS,
    Protocol,
    SplitConfig,
    TrainingSets,
)
from rtrec.training.spark import spark_session, stop_spark

from rtrec.config import Settings
from rtrec.errors import InvalidInput, NotFound
from rtrec.events import EVENT_TYPES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from rtrec.data import Dataset

__all__ = [
    "COUNT_WINDOWS_MS",
    "Protocol",
    "SplitConfig",
    "TrainingSets",
    "build_training_sets",
    "count_columns",
    "point_in_time_features",
    "spark_session",
    "stop_spark",
    "write_event_log",
]

logger = logging.getLogger(__name__)

COUNT_WINDOWS_MS: dict[str, int] = {"1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000}
"""Windows of the per-type event counts; the same windows as the streaming feature views."""
EVENTS_DIR = "events"
DATASET_FILE = "part-dataset.parquet"
"""The one log file written from a data set (a rewrite of the same source replaces it)."""
ITEMS_TABLE = "items"
USERS_TABLE = "users"
_DEDUP_KEY = ("user_id", "item_id", "event_type", "ts", "value")


def count_columns() -> list[str]:
    """Names of the per-type, per-window count features, in a stable order."""
    return [f"cnt_{t}_{w}" for t in EVENT_TYPES for w in COUNT_WINDOWS_MS]


# ---- event log ----------------------------------------------------------------------------
def write_event_log(dataset: Dataset, root: str | Path) -> Path:
    """Write ``dataset`` in the offline layout the stream processor produces.

    Lets training run from a generated or loaded data set without the stream (benchmarks,
    ``rtrec train --data``). The events go through the stream's own log writer
    (``rtrec.streaming.write_events``: same schema, ``partition`` -1 for rows that never
    went through Kafka), under a fixed name so writing the same source again replaces
    them instead of logging them twice.
    """
    from rtrec.streaming import write_events

    out = Path(root)
    events_dir = out / EVENTS_DIR
    write_events(events_dir, dataset.events).replace(events_dir / DATASET_FILE)
    for name, frame in ((ITEMS_TABLE, dataset.items), (USERS_TABLE, dataset.users)):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out / f"{name}.parquet")
    logger.info("wrote event log of %d events to %s", len(dataset.events), out)
    return out


def _read_events(spark: SparkSession, root: Path) -> DataFrame:
    from pyspark.sql import functions as sf

    events_dir = root / EVENTS_DIR
    if not events_dir.exists() or not any(events_dir.rglob("*.parquet")):
        raise NotFound(
            f"no offline event log under {events_dir}: run the stream processor or pass --data"
        )
    raw = spark.read.parquet(str(events_dir))
    missing = [c for c in ("user_id", "item_id", "event_type", "ts") if c not in raw.columns]
    if missing:
        raise InvalidInput(f"event log {events_dir} lacks column(s) {missing}", field=missing[0])
    value = sf.col("value") if "value" in raw.columns else sf.lit(None)
    events = raw.select(
        sf.col("user_id").cast("string"),
        sf.col("item_id").cast("string"),
        sf.col("event_type").cast("string"),
        sf.col("ts").cast("long"),
        value.cast("double").alias("value"),
    )
    # At-least-once delivery can log an event twice; identical content means the same event.
    return events.dropDuplicates(list(_DEDUP_KEY))


def _optional_table(spark: SparkSession, root: Path, name: str) -> DataFrame | None:
    for candidate in (root / f"{name}.parquet", root / name):
        if candidate.exists():
            return spark.read.parquet(str(candidate))
    return None


# ---- point-in-time features --------------------------------------------------------------
def point_in_time_features(events: DataFrame, *, history_len: int) -> DataFrame:
    """Each event plus the user's state strictly before its timestamp (see module doc)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as sf

    per_type = [
        sf.sum(sf.when(sf.col("event_type") == t, 1).otherwise(0)).alias(f"n_{t}")
        for t in EVENT_TYPES
    ]
    # One row per (user, ts): simultaneous events form one group and never see each other.
    groups = events.groupBy("user_id", "ts").agg(
        sf.slice(sf.array_sort(sf.collect_list("item_id")), 1, history_len).alias("_items"),
        sf.count(sf.lit(1)).alias("_n"),
        *per_type,
    )
    by_time = Window.partitionBy("user_id").orderBy("ts")
    last_groups = by_time.rowsBetween(-history_len, -1)
    before = by_time.rowsBetween(Window.unboundedPreceding, -1)
    counts = [
        sf.coalesce(sf.sum(f"n_{t}").over(by_time.rangeBetween(-ms, -1)), sf.lit(0))
        .cast("long")
        .alias(f"cnt_{t}_{w}")
        for t in EVENT_TYPES
        for w, ms in COUNT_WINDOWS_MS.items()
    ]
    hist = sf.slice(
        sf.reverse(sf.flatten(sf.collect_list("_items").over(last_groups))), 1, history_len
    )
    features = groups.select(
        "user_id",
        "ts",
        hist.alias("hist_item_ids"),
        *counts,
        sf.coalesce(sf.sum("_n").over(before), sf.lit(0)).cast("long").alias("n_prev_events"),
        ((sf.col("ts") - sf.lag("ts").over(by_time)) / 1000.0).alias("secs_since_prev"),
    )
    return events.join(features, on=["user_id", "ts"], how="inner").withColumn(
        "event_time", sf.timestamp_millis("ts")
    )


def _with_metadata(examples: DataFrame, items: DataFrame | None, users: DataFrame | None):
    """Join static item metadata and user profile (no time dimension, so no leakage)."""
    from pyspark.sql import functions as sf

    if items is not None and "categories" in items.columns:
        examples = examples.join(
            items.select(
                sf.col("item_id").cast("string"), sf.col("categories").alias("item_categories")
            ),
            on="item_id",
            how="left",
        )
    if users is not None:
        cols = [c for c in ("age", "gender", "occupation") if c in users.columns]
        examples = examples.join(
            users.select(
                sf.col("user_id").cast("string"), *[sf.col(c).alias(f"user_{c}") for c in cols]
            ),
            on="user_id",
            how="left",
        )
    return examples


# ---- splits --------------------------------------------------------------------------------
def _temporal_split(
    examples: DataFrame, events: DataFrame, cfg: SplitConfig
) -> tuple[DataFrame, list[int]]:
    """Global time cuts at quantiles of ``ts``: train | validation | gate | test.

    The quantiles come from ``events``: every event keeps exactly one example, so the
    timestamps are the same, and the window pipeline is not run an extra time for them
    (it was a third of the job).
    """
    from pyspark.sql import functions as sf

    q_gate = 1.0 - cfg.gate_frac - cfg.test_frac
    qs = [q_gate - cfg.valid_frac, q_gate]
    cuts = [int(x) for x in events.approxQuantile("ts", qs, 0.0)]
    if cfg.test_frac > 0:
        cuts.append(int(events.approxQuantile("ts", [1.0 - cfg.test_frac], 0.0)[0]))
    else:  # one past the newest event: the gate slice runs to the end of the log
        cuts.append(int(events.agg(sf.max("ts")).first()[0]) + 1)
    t_valid, t_gate, t_test = cuts
    held_out = [(cfg.valid_frac, t_valid, t_gate), (cfg.gate_frac, t_gate, t_test)]
    if any(frac > 0 and lo >= hi for frac, lo, hi in held_out):
        raise InvalidInput(
            f"event log spans too little time for a temporal split (cuts {cuts})", field="ts"
        )
    ts = sf.col("ts")
    split = (
        sf.when(ts < t_valid, "train")
        .when(ts < t_gate, "validation")
        .when(ts < t_test, "gate")
        .otherwise("test")
    )
    return examples.withColumn("split", split), cuts


def _random_split(examples: DataFrame, cfg: SplitConfig) -> DataFrame:
    """Per user: a seeded shuffle, the first ``test_frac`` to test, the next ``gate_frac``
    of the rest to the gate slice, then ``valid_frac`` of what remains to validation."""
    from pyspark.sql import Window
    from pyspark.sql import functions as sf

    key = sf.xxhash64(sf.lit(cfg.seed), "user_id", "item_id", "event_type", "ts")
    user = Window.partitionBy("user_id")
    rn = sf.row_number().over(user.orderBy(key, "item_id"))
    n = sf.count(sf.lit(1)).over(user)
    n_test = sf.round(n * cfg.test_frac)
    n_gate = sf.round((n - n_test) * cfg.gate_frac)
    n_valid = sf.round((n - n_test - n_gate) * cfg.valid_frac)
    split = (
        sf.when(rn <= n_test, "test")
        .when(rn <= n_test + n_gate, "gate")
        .when(rn <= n_test + n_gate + n_valid, "validation")
    )
    return examples.withColumn("split", split.otherwise("train"))


def build_training_sets(
    settings: Settings,
    *,
    source: str | Path | None = None,
    out_dir: str | Path | None = None,
    config: SplitConfig | None = None,
) -> TrainingSets:
    """Read the event log under ``source`` (default: the offline store), write the splits.

    Output: ``<out_dir>/{train,validation,gate,test}/`` parquet (one row per event, sorted
    by time) and ``meta.json``. Default ``out_dir``: ``<work_dir>/training_sets/<protocol>``.
    """
    cfg = config or SplitConfig(seed=settings.seed)
    root = Path(source) if source is not None else settings.offline_dir
    out = (
        Path(out_dir) if out_dir is not None else settings.work_dir / "training_sets" / cfg.protocol
    )
    spark = spark_session(settings)
    events = _read_events(spark, root)
    examples = point_in_time_features(events, history_len=cfg.history_len)
    examples = _with_metadata(
        examples,
        _optional_table(spark, root, ITEMS_TABLE),
        _optional_table(spark, root, USERS_TABLE),
    )
    if cfg.protocol == "temporal":
        labeled, cuts = _temporal_split(examples, events, cfg)
    else:
        labeled, cuts = _random_split(examples, cfg), []
    labeled = labeled.cache()  # the window pipeline runs once for all the splits
    counts, ranges = _split_stats(labeled)
    _write_splits(labeled, counts, out)
    labeled.unpersist()
    sets = TrainingSets(
        root=out,
        protocol=cfg.protocol,
        counts=counts,
        history_len=cfg.history_len,
        cut_ts=cuts,
        ts_range=ranges,
        source=str(root),
    )
    meta = {k: v for k, v in asdict(sets).items() if k != "root"}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    logger.info("training sets (%s) written to %s: %s", cfg.protocol, out, counts)
    return sets


def _split_stats(labeled: DataFrame) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Rows per split (every split named, 0 when empty) and each non-empty split's
    [oldest, newest] event time."""
    from pyspark.sql import functions as sf

    counts = {name: 0 for name in SPLITS}
    ranges: dict[str, list[int]] = {}
    stats = labeled.groupBy("split").agg(
        sf.count(sf.lit(1)).alias("n"), sf.min("ts").alias("lo"), sf.max("ts").alias("hi")
    )
    for row in stats.collect():
        counts[row["split"]] = int(row["n"])
        ranges[row["split"]] = [int(row["lo"]), int(row["hi"])]
    return counts, ranges


def _write_splits(labeled: DataFrame, counts: dict[str, int], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        frame = labeled.where(labeled["split"] == name).drop("split")
        # One partition at least, so an empty split is still a readable file with the schema.
        if counts[name] == 0:
            frame = frame.coalesce(1)
        frame.sortWithinPartitions(*ORDER).write.mode("overwrite").parquet(str(out / name))
