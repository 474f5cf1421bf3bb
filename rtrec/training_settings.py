"""Settings of the training pipeline (the ``training`` field of :class:`rtrec.config.Settings`).

Kept out of :mod:`rtrec.config` so that module stays one screenful per stage, loaded the
same way (``RTREC_TRAINING__*`` variables, then the ``RTREC_CONFIG`` file).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid")


class TrainingSettings(BaseModel):
    """The promotion gate, the served index's quality bar and the second stage."""

    model_config = _STRICT

    gate_margin: float = Field(0.02, ge=0.0)
    """Relative NDCG@10 gain on the gate slice a challenger's mean must reach to become
    champion; its paired-bootstrap lower bound must also stay above ``-gate_margin``.
    Large enough that a retrain with another seed does not replace the champion by chance
    (bench/gate.py measures the false-promotion rate)."""
    gate_confidence: float = Field(0.95, gt=0.0, lt=1.0)
    """Coverage of the gain's bootstrap interval."""
    gate_samples: int = Field(2000, ge=100)
    """Bootstrap resamples over gate users."""
    gate_frac: float = Field(0.1, gt=0.0, lt=0.5)
    """Share of the events (the most recent, by time) in the gate slice."""
    min_index_recall: float = Field(0.95, ge=0.0, le=1.0)
    """recall@100 of the served ANN index against exact search of the same model, with the
    gate users' query vectors, below which a training run fails before promotion."""
    index_exact_max_items: int = Field(50_000, ge=1)
    """Up to this many items the index is exact (flat); above, IVF with a tuned nprobe."""
    ranker: bool = True
    """Fit the second stage (candidate sources and a LightGBM ranker over them) and ship it
    in the bundle: serving then ranks the merged candidates. False: retrieval only."""
    ranker_users: int = Field(2000, ge=10)
    """Validation users (sampled) whose candidate lists the ranker learns from: its fit
    time grows with them (about 200 rows each)."""
    ranker_max_trees: int = Field(100, ge=1)
    """Most trees the ranker may grow (early stopping picks fewer): a request's ranking
    time grows with them, about 3.7 us a tree of 31 leaves for 200 candidates on one core
    here (the features take about 0.3 ms more); 100 keep a request's ranking near its
    1 ms budget on this 2-core machine, whose p99 runs 1.5 to 2 times its p50."""
    ranker_neighbours: int = Field(100, ge=1)
    """Item-item neighbours kept per item: a request's item-item work is its history
    length times this."""
    ranker_states_min_agreement: float = Field(0.9, ge=0.0, le=1.0)
    """Share of the ranker's training states from Feast's historical retrieval that must
    equal the event log's at the cut for them to be used. The offline store keeps one row
    per user per stream flush (2 s): live, few users straddle the cut within one flush;
    a fast replay (the demo's) puts days of events in one flush, and the retrieved states
    miss them. Below it the event log's states are used, with a WARNING and the reason
    and the measured share in the ranker's info."""
    promotion: Literal["direct", "ab"] = "direct"
    """What a model that passes the gate becomes: ``direct``, the champion at once; ``ab``,
    the ``challenger`` of an A/B test at ``serving.ab_challenger_share`` (which must then
    be above 0), promoted or archived later on online evidence by the
    ``rtrec_experiment_decision`` DAG. Without a champion to test against it is promoted."""
