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
Empty splits are written too (with the schema), so every split can always be read.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rtrec.config import Settings
from rtrec.errors import InvalidInput, NotFound
from rtrec.events import EVENT_TYPES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from rtrec.data import Dataset

logger = logging.getLogger(__name__)

Protocol = Literal["temporal", "random"]
SPLITS = ("train", "validation", "gate", "test")
COUNT_WINDOWS_MS: dict[str, int] = {"1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000}
"""Windows of the per-type event counts; the same windows as the streaming feature views."""
EVENTS_DIR = "events"
ITEMS_TABLE = "items"
USERS_TABLE = "users"
META_FILE = "meta.json"
_DEDUP_KEY = ("user_id", "item_id", "event_type", "ts", "value")
_ORDER = ("ts", "user_id", "item_id", "event_type")
"""Row order of every split: time first, then a total order so reruns are identical."""

_lock = threading.Lock()
_session: SparkSession | None = None


def count_columns() -> list[str]:
    """Names of the per-type, per-window count features, in a stable order."""
    return [f"cnt_{t}_{w}" for t in EVENT_TYPES for w in COUNT_WINDOWS_MS]


@dataclass(frozen=True)
class SplitConfig:
    """How examples are built and split; the defaults suit the temporal benchmark protocol
    (train | validation | test, no gate slice); :func:`rtrec.training.pipeline.split_config` gives
    the product's split (train | validation | gate)."""

    protocol: Protocol = "temporal"
    history_len: int = 20
    """Items kept in ``hist_item_ids``."""
    valid_frac: float = 0.1
    """temporal: share of events (by time) in validation; random: share of each user's
    non-test, non-gate events held out for validation (0 keeps the published 75/25)."""
    test_frac: float = 0.1
    """temporal: share of the latest events in test; random: each user's test share."""
    gate_frac: float = 0.0
    """temporal: share of events (by time) in the gate slice, just before test (the most
    recent period when there is no test); random: share of each user's non-test events."""
    seed: int = 42

    def __post_init__(self) -> None:
        if self.protocol not in ("temporal", "random"):
            raise InvalidInput(
                f"protocol must be 'temporal' or 'random', got {self.protocol!r}", field="protocol"
            )
        if self.history_len < 1:
            raise InvalidInput("history_len must be >= 1", field="history_len")
        fracs = {"valid_frac": self.valid_frac, "gate_frac": self.gate_frac}
        fracs["test_frac"] = self.test_frac
        for name, value in fracs.items():
            if not 0 <= value < 1:
                raise InvalidInput(f"{name} must be in [0, 1), got {value}", field=name)
        if self.gate_frac + self.test_frac == 0:
            raise InvalidInput(
                "a split needs a held-out part: gate_frac or test_frac > 0", field="test_frac"
            )
        if sum(fracs.values()) >= 1:
            raise InvalidInput("valid_frac + gate_frac + test_frac must be < 1", field="valid_frac")

    @classmethod
    def published(cls, **overrides: object) -> SplitConfig:
        """Random per-user 75/25 as in the published ML-100K tables (no validation cut)."""
        return cls(**{"protocol": "random", "valid_frac": 0.0, "test_frac": 0.25, **overrides})


@dataclass(frozen=True)
class TrainingSets:
    """Where the split parquet went and what is in it (also written as ``meta.json``)."""

    root: Path
    protocol: Protocol
    counts: dict[str, int]
    history_len: int
    cut_ts: list[int] = field(default_factory=list)
    """temporal: [validation start, gate start, test start] in ms (a start equal to the
    next one means that split is empty; the last is one past the newest event when there
    is no test); random: empty."""
    ts_range: dict[str, list[int]] = field(default_factory=dict)
    """Per non-empty split: [oldest, newest] event time in ms."""

    def path(self, split: str) -> Path:
        if split not in SPLITS:
            raise InvalidInput(f"unknown split {split!r}; expected one of {SPLITS}", field="split")
        return self.root / split

    def read(self, split: str) -> pd.DataFrame:
        """One split as pandas (list columns as numpy arrays of str) in ``_ORDER``."""
        table = pq.read_table(self.path(split))
        return table.to_pandas().sort_values(list(_ORDER), kind="stable", ignore_index=True)

    @classmethod
    def load(cls, root: str | Path) -> TrainingSets:
        meta_file = Path(root) / META_FILE
        if not meta_file.is_file():
            raise NotFound(f"no training sets at {root} ({META_FILE} missing)")
        meta = json.loads(meta_file.read_text())
        return cls(root=Path(root), **{k: v for k, v in meta.items() if k != "root"})


# ---- Spark session ----------------------------------------------------------------------
def spark_session(settings: Settings) -> SparkSession:
    """The process's one SparkSession, started on first use (~6 s) and reused after."""
    global _session
    with _lock:
        if _session is not None and not _session.sparkContext._jsc.sc().isStopped():
            return _session
        from pyspark.sql import SparkSession

        master = settings.spark.master
        if master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            SparkSession.builder.master(master)
            .appName("rtrec-training-sets")
            .config("spark.driver.memory", settings.spark.driver_memory)
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.default.parallelism", "4")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config(
                "spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile={_log4j(settings)}"
            )
        )
        if master.startswith("local"):
            builder = builder.config("spark.driver.host", "127.0.0.1")
        _session = builder.getOrCreate()
        _session.sparkContext.setLogLevel("ERROR")
        logger.info("spark session started (master=%s)", master)
        return _session


_LOG4J = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex
logger.pygw.name = org.apache.spark.api.python.PythonGatewayServer
logger.pygw.level = error
"""


def _log4j(settings: Settings) -> str:
    """A log4j2 config that keeps Spark's JVM to errors, even during start-up."""
    path = settings.work_dir / "spark" / "log4j2.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_LOG4J)
    return path.as_uri()


def stop_spark() -> None:
    """Stop the shared session (tests, CLI exit); the next call starts a fresh one."""
    global _session
    with _lock:
        if _session is not None:
            _session.stop()
            _session = None


# ---- event log ----------------------------------------------------------------------------
def write_event_log(dataset: Dataset, root: str | Path) -> Path:
    """Write ``dataset`` in the offline layout the stream processor produces.

    Lets training run from a generated or loaded data set without the stream (benchmarks,
    ``rtrec train --data``). ``partition`` is -1 to mark rows that never went through Kafka.
    """
    out = Path(root)
    (out / EVENTS_DIR).mkdir(parents=True, exist_ok=True)
    ev = dataset.events
    table = pa.table(
        {
            "user_id": pa.array(ev["user_id"], pa.string()),
            "item_id": pa.array(ev["item_id"], pa.string()),
            "event_type": pa.array(ev["event_type"], pa.string()),
            "ts": pa.array(ev["ts"], pa.int64()),
            "event_time": pa.array(
                ev["ts"].to_numpy().astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")
            ),
            "value": pa.array(ev["value"], pa.float64(), from_pandas=True),
            "partition": pa.array([-1] * len(ev), pa.int32()),
            "offset": pa.array(range(len(ev)), pa.int64()),
        }
    )
    pq.write_table(
        table,
        out / EVENTS_DIR / "part-dataset.parquet",
        coerce_timestamps="us",
        allow_truncated_timestamps=True,
    )
    for name, frame in ((ITEMS_TABLE, dataset.items), (USERS_TABLE, dataset.users)):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out / f"{name}.parquet")
    logger.info("wrote event log of %d events to %s", len(ev), out)
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

    Output: ``<out_dir>/{train,validation,test}/`` parquet (one row per event, sorted by
    time) and ``meta.json``. Default ``out_dir``: ``<work_dir>/training_sets/<protocol>``.
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
    labeled = labeled.cache()  # the window pipeline runs once for all three splits
    from pyspark.sql import functions as sf

    counts = {name: 0 for name in SPLITS}
    ranges: dict[str, list[int]] = {}
    stats = labeled.groupBy("split").agg(
        sf.count(sf.lit(1)).alias("n"), sf.min("ts").alias("lo"), sf.max("ts").alias("hi")
    )
    for row in stats.collect():
        counts[row["split"]] = int(row["n"])
        ranges[row["split"]] = [int(row["lo"]), int(row["hi"])]
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        frame = labeled.where(labeled["split"] == name).drop("split")
        # One partition at least, so an empty split is still a readable file with the schema.
        if counts[name] == 0:
            frame = frame.coalesce(1)
        frame.sortWithinPartitions(*_ORDER).write.mode("overwrite").parquet(str(out / name))
    labeled.unpersist()
    sets = TrainingSets(
        root=out,
        protocol=cfg.protocol,
        counts=counts,
        history_len=cfg.history_len,
        cut_ts=cuts,
        ts_range=ranges,
    )
    meta = {k: v for k, v in asdict(sets).items() if k != "root"}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    logger.info("training sets (%s) written to %s: %s", cfg.protocol, out, counts)
    return sets
