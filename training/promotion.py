"""The promotion gate's decision, the logged metric it compares, and the tags that record
the decision on a model version.

:func:`decide_promotion` is the rule applied by
:meth:`rtrec.training.registry.ModelRegistry.promote_on_evidence`: the evidence must be
about the champion serving now, and then the gate's own rule (``rtrec.training.gate``)
decides. No MLflow here: the registry applies the decision to its aliases and tags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from rtrec.training.gate import GateEvidence, decide

GATE_METRIC = "gate_ndcg_at_10"
"""The metric the gate compares, as logged: NDCG@10 on the gate slice (``gate_`` + the
evaluation key, ``@`` spelled ``_at_``)."""
TAG_DECISION = "promotion.decision"
TAG_REASON = "promotion.reason"
TAG_PREVIOUS = "promotion.previous_champion"
TAG_DECIDED_AT = "promotion.decided_at"
TAG_ROLLED_BACK = "rollback.demoted_to"
TAG_RESTORED = "rollback.restored_from"


def metric_key(name: str) -> str:
    """An MLflow-legal metric name: ``ndcg@10`` -> ``ndcg_at_10``."""
    return name.replace("@", "_at_").replace(" ", "_")


def now() -> str:
    """A tag's timestamp: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PromotionDecision:
    """What the gate decided and why; also written to the version's tags."""

    version: str
    promoted: bool
    reason: str
    metric: str
    value: float | None = None
    champion_version: str | None = None
    champion_value: float | None = None
    evidence: dict[str, Any] | None = None
    """The gate's evidence (``rtrec.training.gate.GateEvidence.to_dict``), when it judged."""
    margin: float | None = None
    ab_test: bool = False
    """Passed the gate and became the challenger of an A/B test (``training.promotion``
    ``ab``) instead of the champion: the online experiment decides."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (DAG XComs, ``rtrec train --json``, the demo's report)."""
        return asdict(self)


def decide_promotion(
    version: str, evidence: GateEvidence, *, current: str | None, margin: float
) -> PromotionDecision:
    """Whether ``version`` replaces ``current`` (the champion now; None: there is none).

    The evidence must be about the champion serving now: if the ``champion`` alias moved
    since the training run scored it, the challenger is kept, saying so. No champion:
    the gate's rule promotes (``rtrec.training.gate.decide``).
    """
    e = evidence
    common: dict[str, Any] = {
        "metric": e.metric,
        "value": e.challenger,
        "champion_version": current,
        "champion_value": e.champion,
        "evidence": e.to_dict(),
        "margin": margin,
    }
    if current == version:
        return PromotionDecision(version, False, "already champion", **common)
    if current != e.champion_version:
        scored = f"v{e.champion_version}" if e.champion_version else "no champion"
        reason = (
            f"the challenger was scored against {scored} but the champion is now "
            f"v{current}; not promoted (retrain, or promote by hand)"
        )
        return PromotionDecision(version, False, reason, **common)
    outcome = decide(e, margin=margin)
    return PromotionDecision(version, outcome.promoted, outcome.reason, **common)


def to_ab_test(decision: PromotionDecision, *, share: float) -> PromotionDecision:
    """A decision the gate passed, as the start of an A/B test (``training.promotion``
    ``ab``): the version serves ``share`` of users as ``challenger`` until the experiment
    decides. A first model has no champion to be tested against and stays promoted; a
    refused one is not tested (the offline gate is the first filter)."""
    if not decision.promoted or decision.champion_version is None:
        return decision
    reason = (
        f"{decision.reason}; A/B test against champion v{decision.champion_version} "
        f"at {share:.0%} of users before it can become champion"
    )
    return replace(decision, promoted=False, ab_test=True, reason=reason)
