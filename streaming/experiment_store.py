"""The experiment aggregates in the offline store: ``<offline_dir>/experiments/*.parquet``.

The join (``rtrec.streaming.experiment_join``) appends each touched arm's cumulative
totals after its Redis commit: one row per arm and flush, stamped ``written_ms``. Totals,
not increments: a flush repeated after a crash or a redelivery writes the same totals
again, so the log's history per arm is how the experiment grew and its latest row is the
arm (:func:`read_arm_rows`).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from rtrec.streaming.attribution import OUTCOMES
from rtrec.streaming.event_log import write_log_file

from rtrec.config import Settings

COUNTS = ("impressions", "users", *OUTCOMES, "clicked_impressions", "clicking_users")
SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),
        ("variant", pa.string()),
        *[(name, pa.int64()) for name in COUNTS],
        ("rr_sum", pa.float64()),
        ("first_ms", pa.int64()),
        ("last_ms", pa.int64()),
        ("written_ms", pa.int64()),
    ]
)


def append_arm_rows(
    settings: Settings, arms: dict[tuple[str, str], dict[str, Any]], *, written_ms: int
) -> None:
    """Append one row per arm (``arms``: (experiment, variant) -> totals)."""
    rows = [
        {
            "experiment": experiment,
            "variant": variant,
            **{name: int(row.get(name, 0)) for name in COUNTS},
            "rr_sum": float(row.get("rr_sum", 0.0)),
            "first_ms": int(row.get("first_ms", 0)),
            "last_ms": int(row.get("last_ms", 0)),
            "written_ms": written_ms,
        }
        for (experiment, variant), row in arms.items()
    ]
    directory = settings.offline_dir / "experiments"
    directory.mkdir(parents=True, exist_ok=True)
    write_log_file(directory, pa.Table.from_pylist(rows, schema=SCHEMA))


def read_arm_rows(settings: Settings, *, latest: bool = True) -> Any:
    """The offline rows as pandas; ``latest``: one row per arm, its newest totals."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = sorted((settings.offline_dir / "experiments").glob("*.parquet"))
    if not files:
        return pd.DataFrame(columns=SCHEMA.names)
    frame = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
    if not latest:
        return frame
    frame = frame.sort_values(["written_ms", "impressions"], kind="stable")
    return frame.groupby(["experiment", "variant"], as_index=False).tail(1).reset_index(drop=True)
