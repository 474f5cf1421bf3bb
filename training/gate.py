"""The promotion gate's evidence and rule: challenger vs champion on the gate slice.

The gate slice is the most recent period of the training sets (``rtrec.training.dataset``) that
no selection step touched. Both models are scored on it with the same seen-item mask, per
user; a paired bootstrap gives an interval for the relative gain, and the rule promotes
when the mean gain reaches the margin and the interval's lower bound stays above
``-margin``: a challenger must be better by the margin on average and not plausibly worse
by more than it. Numbers only here (numpy, no MLflow), so the rule is unit-tested and the
benchmark (``bench/gate.py``) runs it on many challengers.

Why two-way: users are not the only random draw. Many users' hits fall on the same few
items of the period, so two models that differ only in their seed can differ by several
per cent on one slice because one of them happens to rank a handful of that week's items
higher. Resampling users alone treats that as signal: measured on the synthetic data,
about a quarter of same-settings retrains passed a users-only gate. The interval here
resamples users (multinomial) and reweights items (Poisson(1) weights on each item's
hits), the pigeonhole bootstrap for crossed users x items (Owen, 2007), so a gain carried
by a few items shows a wide interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from rtrec.errors import InvalidInput

GATE_SPLIT = "gate"
METRIC = "ndcg@10"
BOOTSTRAP_CHUNK = 100
"""Resamples drawn at once (memory: chunk x users indices)."""


@dataclass(frozen=True)
class GateRule:
    """How the evidence turns into a decision (``settings.training`` holds the values)."""

    margin: float = 0.02
    """Relative gain the challenger's mean must reach; also how much worse the interval's
    lower bound may go."""
    confidence: float = 0.95
    samples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise InvalidInput("gate confidence must be in (0, 1)", field="gate_confidence")
        if self.samples < 100:
            raise InvalidInput("gate bootstrap needs at least 100 samples", field="gate_samples")
        if self.margin < 0:
            raise InvalidInput("gate margin must be >= 0", field="gate_margin")


@dataclass(frozen=True)
class SliceInfo:
    """Which data judged: split name, rows, users scored, event-time range (ms)."""

    name: str
    rows: int
    users: int
    start_ms: int | None
    end_ms: int | None

    def describe(self) -> str:
        def iso(ms: int | None) -> str:
            if ms is None:
                return "?"
            return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")

        return (
            f"{self.name} slice, {self.rows} rows, {self.users} users, "
            f"{iso(self.start_ms)} .. {iso(self.end_ms)}"
        )


@dataclass(frozen=True)
class GateEvidence:
    """Everything the gate compared; travels in the DAG's XCom and onto the version's tags."""

    slice: SliceInfo
    metric: str
    challenger: float
    champion_version: str | None = None
    champion: float | None = None
    gain: float | None = None
    """Relative gain of the mean: challenger / champion - 1."""
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = 0.95
    samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    challenger_system: str = "retrieval"
    """What was judged of the challenger: ``two_stage`` (its candidates then its ranker,
    as served) or ``retrieval`` (the two-tower's order: a bundle without a ranker)."""
    champion_system: str | None = None
    """What was judged of the champion: what serving answers with for it (the same names)."""
    champion_flag: str | None = None
    """Why the champion was judged by retrieval order (it declares no ranker, or its ranker
    cannot be loaded); None when it was judged by its own two stages."""

    def systems(self) -> str:
        """``two_stage vs retrieval (why)``: what the gate compared, for its reason."""
        champion = self.champion_system or "-"
        flag = f" ({self.champion_flag})" if self.champion_flag else ""
        return f"{self.challenger_system} vs {champion}{flag}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateEvidence:
        data = dict(d)
        data["slice"] = SliceInfo(**data["slice"])
        return cls(**data)


@dataclass(frozen=True)
class UserScores:
    """One model on the gate slice: per-user NDCG@10 (aligned on ``users``) and the hits
    it is made of (``user_id``, ``item_id``, ``ndcg``; ``rtrec.training.evaluate.Ranking``)."""

    users: np.ndarray
    values: np.ndarray
    hits: pd.DataFrame

    @classmethod
    def from_ranking(cls, ranking: Any, metric: str = METRIC) -> UserScores:
        return cls(
            ranking.per_user.index.to_numpy(),
            ranking.per_user[metric].to_numpy(dtype=np.float64),
            ranking.hits,
        )

    def aligned_to(self, users: np.ndarray) -> UserScores:
        """The same model on ``users``' order (users it has no row for score 0)."""
        values = pd.Series(self.values, index=self.users).reindex(users).fillna(0.0)
        return UserScores(users, values.to_numpy(), self.hits)


@dataclass(frozen=True)
class GateOutcome:
    promoted: bool
    reason: str


def paired_bootstrap(
    challenger: UserScores,
    champion: UserScores,
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(relative gain of the means, interval low, interval high), resampling users and
    reweighting items (see the module docstring).

    Pairs are kept together (a resampled user counts for both models), so the variance
    between users that both models share cancels.
    """
    a, b = challenger.values.astype(np.float64), champion.values.astype(np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise InvalidInput(
            f"paired bootstrap needs two aligned, non-empty per-user arrays; got {a.shape} "
            f"and {b.shape}",
            field="gate",
        )
    if not np.array_equal(challenger.users, champion.users):
        raise InvalidInput("paired bootstrap needs both models on the same users", field="gate")
    if b.sum() <= 0:
        raise InvalidInput(
            "the champion scores 0 on every gate user: no relative gain", field="gate"
        )
    gain = float(a.sum() / b.sum() - 1.0)
    users = pd.Index(challenger.users)
    hits = [_hit_arrays(x.hits, users) for x in (challenger, champion)]
    items = pd.Index(np.union1d(hits[0][1], hits[1][1]))
    coded = [(u, items.get_indexer(i), v) for u, i, v in hits]
    rng = np.random.default_rng(seed)
    n = len(a)
    draws: list[np.ndarray] = []
    for start in range(0, samples, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, samples - start)
        weights = rng.poisson(1.0, size=(len(items), size)).astype(np.float64)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size).T  # users x size
        sums = []
        for u, i, v in coded:
            per_user = np.zeros((n, size))
            np.add.at(per_user, u, v[:, None] * weights[i])
            sums.append((counts * per_user).sum(axis=0))
        draws.append(sums[0] / np.maximum(sums[1], 1e-12) - 1.0)
    gains = np.concatenate(draws)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(gains, [tail, 100 - tail])
    return gain, float(low), float(high)


def _hit_arrays(hits: pd.DataFrame, users: pd.Index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user row, item id, NDCG share) of the hits of ``users``."""
    rows = users.get_indexer(hits["user_id"].astype(str))
    keep = rows >= 0
    return (
        rows[keep],
        hits["item_id"].astype(str).to_numpy()[keep],
        hits["ndcg"].to_numpy(dtype=np.float64)[keep],
    )


def gather_evidence(
    slice_info: SliceInfo,
    challenger: UserScores,
    champion: UserScores | None,
    *,
    champion_version: str | None,
    rule: GateRule,
    metric: str = METRIC,
) -> GateEvidence:
    """The evidence for one challenger: its mean, and with a champion both means, the gain
    and its bootstrap interval (the champion aligned on the challenger's users)."""
    values = challenger.values
    chal_mean = float(np.mean(values)) if len(values) else 0.0
    if champion is None:
        return GateEvidence(slice_info, metric, chal_mean)
    champion = champion.aligned_to(challenger.users)
    champ_mean = float(np.mean(champion.values)) if len(values) else 0.0
    gain, low, high = paired_bootstrap(
        challenger, champion, samples=rule.samples, confidence=rule.confidence, seed=rule.seed
    )
    return GateEvidence(
        slice_info,
        metric,
        chal_mean,
        champion_version=champion_version,
        champion=champ_mean,
        gain=gain,
        ci_low=low,
        ci_high=high,
        confidence=rule.confidence,
        samples=rule.samples,
    )


def decide(evidence: GateEvidence, *, margin: float) -> GateOutcome:
    """Promote when ``gain >= margin`` and ``ci_low > -margin``; no champion: promote."""
    e = evidence
    where = e.slice.describe()
    if e.champion_version is None:
        return GateOutcome(
            True,
            f"no champion yet; {e.metric} {e.challenger:.4f} ({e.challenger_system}) on the "
            f"{where}",
        )
    if e.gain is None or e.ci_low is None or e.ci_high is None or e.champion is None:
        raise InvalidInput(
            f"gate evidence against champion v{e.champion_version} has no scores", field="gate"
        )
    ok = e.gain >= margin and e.ci_low > -margin
    verdict = "promote" if ok else "keep the champion"
    why = (
        f"{e.metric} {e.challenger:.4f} vs champion v{e.champion_version} {e.champion:.4f} on "
        f"the {where}, systems {e.systems()}: gain {e.gain:+.2%} ({e.confidence:.0%} "
        f"interval {e.ci_low:+.2%} .. {e.ci_high:+.2%}, paired bootstrap over users and "
        f"items, {e.samples} resamples); rule: "
        f"gain >= {margin:.2%} and lower bound > {-margin:.2%} -> {verdict}"
    )
    return GateOutcome(ok, why)


def evidence_tags(evidence: GateEvidence, *, margin: float) -> dict[str, str]:
    """The decision record as MLflow version tags (``gate.*``)."""
    e = evidence
    tags = {
        "gate.slice": e.slice.name,
        "gate.rows": e.slice.rows,
        "gate.users": e.slice.users,
        "gate.start_ms": e.slice.start_ms,
        "gate.end_ms": e.slice.end_ms,
        "gate.metric": e.metric,
        "gate.challenger": round(e.challenger, 6),
        "gate.champion_version": e.champion_version,
        "gate.champion": None if e.champion is None else round(e.champion, 6),
        "gate.gain": None if e.gain is None else round(e.gain, 6),
        "gate.ci_low": None if e.ci_low is None else round(e.ci_low, 6),
        "gate.ci_high": None if e.ci_high is None else round(e.ci_high, 6),
        "gate.confidence": e.confidence,
        "gate.samples": e.samples,
        "gate.margin": margin,
        "gate.rule": "gain >= margin and ci_low > -margin",
        "gate.challenger_system": e.challenger_system,
        "gate.champion_system": e.champion_system,
        "gate.champion_flag": e.champion_flag,
    }
    return {k: str(v) for k, v in tags.items() if v is not None}
