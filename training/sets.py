"""The training sets as written and as read: how they are split, where the splits are,
and the splits as pandas frames. No Spark here: readers (the fitter, benchmarks, the DAG's
steps) need only pandas and pyarrow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow.parquet as pq

from rtrec.errors import InvalidInput, NotFound

Protocol = Literal["temporal", "random"]
SPLITS = ("train", "validation", "gate", "test")
META_FILE = "meta.json"
ORDER = ("ts", "user_id", "item_id", "event_type")
"""Row order of every split: time first, then a total order so reruns are identical."""


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
    source: str | None = None
    """The event log the sets were built from (None in sets written before it was
    recorded): the stream's offline log has feature rows beside it, others have none."""

    def path(self, split: str) -> Path:
        if split not in SPLITS:
            raise InvalidInput(f"unknown split {split!r}; expected one of {SPLITS}", field="split")
        return self.root / split

    def read(self, split: str) -> pd.DataFrame:
        """One split as pandas (list columns as numpy arrays of str) in ``ORDER``."""
        table = pq.read_table(self.path(split))
        return table.to_pandas().sort_values(list(ORDER), kind="stable", ignore_index=True)

    @classmethod
    def load(cls, root: str | Path) -> TrainingSets:
        meta_file = Path(root) / META_FILE
        if not meta_file.is_file():
            raise NotFound(f"no training sets at {root} ({META_FILE} missing)")
        meta = json.loads(meta_file.read_text())
        return cls(root=Path(root), **{k: v for k, v in meta.items() if k != "root"})


@dataclass(frozen=True)
class Frames:
    """The splits as pandas, and the ``seen`` frame each held-out split is judged against."""

    train: pd.DataFrame
    validation: pd.DataFrame
    gate: pd.DataFrame
    test: pd.DataFrame

    @classmethod
    def read(cls, sets: TrainingSets) -> Frames:
        return cls(*(sets.read(s) for s in ("train", "validation", "gate", "test")))

    @cached_property
    def fit_part(self) -> pd.DataFrame:
        """What the served model is fitted on: train + validation (selection is over).
        Cached: the refit, the gate and the index all read it."""
        return pd.concat([self.train, self.validation], ignore_index=True)

    @cached_property
    def before_test(self) -> pd.DataFrame:
        return pd.concat([self.train, self.validation, self.gate], ignore_index=True)
