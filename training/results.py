"""What a fitter hands back (:class:`FitOutput`) and how its metric tables are named.

Each table maps a model's name to its metrics on one split: the trained model under
:data:`MODEL_NAME`, the baselines under their own names, the registered champion (gate
slice only) under :data:`CHAMPION_KEY`. :func:`flat_metrics` turns the three tables into
the MLflow metric names the registry logs and the gate reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtrec.training.promotion import metric_key

MODEL_NAME = "two_tower"
"""Key of the trained model in the metrics tables (the baselines use their own names)."""
CHAMPION_KEY = "current_champion"
"""Key of the registered champion in the gate slice's metrics table (the system serving
answers with: its two stages, or its retrieval order; the gate's evidence says which)."""
TWO_STAGE = "two_stage"
"""Key of the two-stage system (candidates, then the ranker) in the metrics tables, and
its name in the gate's evidence."""
RETRIEVAL = "retrieval"
"""The gate's name for a system judged by the two-tower's retrieval order alone."""


@dataclass
class FitOutput:
    """What the model side hands back: a saved bundle, metrics per model and split, the
    gate's evidence, the served index's measured recall, and the report."""

    bundle_dir: Path
    val_metrics: dict[str, dict[str, float]]
    """Selection: each model fitted on train, scored on validation."""
    gate_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """Each model refitted on train + validation (and the champion), on the gate slice."""
    test_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """The refitted models on test; empty where the protocol has no test split."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """``rtrec.training.gate.GateEvidence.to_dict()``: what the promotion gate decides on."""
    index: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    ranker: dict[str, Any] = field(default_factory=dict)
    """The second stage's fit and gate-slice figures (``rtrec.training.ranker_fit``);
    empty when the bundle has none."""
    report_md: Path | None = None
    report_png: Path | None = None

    @property
    def heldout(self) -> tuple[str, dict[str, dict[str, float]]]:
        """The report's table: test where there is one, else the gate slice (both untouched
        by selection)."""
        return ("test", self.test_metrics) if self.test_metrics else ("gate", self.gate_metrics)


def flat_metrics(
    val: dict[str, dict[str, float]],
    gate: dict[str, dict[str, float]],
    test: dict[str, dict[str, float]],
) -> dict[str, float]:
    """MLflow metric names: ``gate_ndcg_at_10`` for the model, ``EASE.gate_ndcg_at_10``
    for the others (``val_`` / ``gate_`` / ``test_`` by split)."""
    out: dict[str, float] = {}
    for prefix, table in (("val", val), ("gate", gate), ("test", test)):
        for model, metrics in table.items():
            head = f"{prefix}_" if model == MODEL_NAME else f"{model}.{prefix}_"
            out |= {head + metric_key(k): float(v) for k, v in metrics.items()}
    return out


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None and numpy scalars as Python numbers: what
    an XCom, MLflow tag or JSON report can carry."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
