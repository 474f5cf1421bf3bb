"""The gate slice's judgement: every refitted model and the registered champion ranked on
it with the same seen-item mask, and the promotion gate's evidence (challenger vs champion,
per user, ``rtrec.training.gate``) from the same ranking. The gate slice is touched by no
selection step, so it is a fair judge.

The gate judges the systems users would get: the challenger's two stages (candidates then
its ranker) when it has a ranker, and the champion as serving answers with it
(``rtrec.training.served_system``): its own two stages, or its retrieval order when it
declares no ranker or its ranker cannot be loaded, which the evidence flags.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rtrec.training.evaluate import Ranking, evaluate, rank
from rtrec.training.gate import GateEvidence, GateRule, SliceInfo, UserScores, gather_evidence
from rtrec.training.results import CHAMPION_KEY, MODEL_NAME, RETRIEVAL, TWO_STAGE
from rtrec.training.served_system import served_system
from rtrec.training.sets import Frames, TrainingSets

from rtrec.config import Settings
from rtrec.errors import InvalidInput


def gate_rule(settings: Settings) -> GateRule:
    """The promotion gate's rule as configured (``settings.training.gate_*``)."""
    return GateRule(
        margin=settings.training.gate_margin,
        confidence=settings.training.gate_confidence,
        samples=settings.training.gate_samples,
        seed=settings.seed,
    )


def judge(
    frames: Frames, model: Any, finals: dict[str, Any]
) -> tuple[dict[str, dict[str, float]], Ranking]:
    """Every refitted model's metrics on the gate slice, and the two-tower's ranking there
    (the challenger's retrieval order)."""
    seen, gate = frames.fit_part, frames.gate
    ranking = rank(model, seen, gate)
    metrics = {
        MODEL_NAME: ranking.summary,
        **{n: evaluate(m, seen, gate) for n, m in finals.items()},
    }
    return metrics, ranking


def gate_evidence(
    settings: Settings,
    sets: TrainingSets,
    frames: Frames,
    retrieval: Ranking,
    two_stage: Ranking | None,
    champion: tuple[str, Any] | None,
    metrics: dict[str, dict[str, float]],
) -> GateEvidence:
    """The gate's evidence: the challenger as it would be served (its ``two_stage``
    ranking of the gate slice where it has a ranker, else its ``retrieval`` order) against
    the champion ``(version, bundle)`` scored as served; the champion's metrics join
    ``metrics`` under ``CHAMPION_KEY``."""
    system, ranking = (RETRIEVAL, retrieval) if two_stage is None else (TWO_STAGE, two_stage)
    span = sets.ts_range.get("gate") or [None, None]
    info = SliceInfo("gate", len(frames.gate), len(ranking.per_user), span[0], span[1])
    rule = gate_rule(settings)
    scores = UserScores.from_ranking(ranking)
    if champion is None:
        evidence = gather_evidence(info, scores, None, champion_version=None, rule=rule)
        return replace(evidence, challenger_system=system)
    version, bundle = champion
    if ranking.per_user.empty:
        raise InvalidInput(
            f"the gate slice has no user with an unseen item to judge champion v{version} "
            "against the challenger: more events are needed",
            field="gate",
        )
    scorer, champ_system, flag = served_system(bundle, version)
    champ_ranking = rank(scorer, frames.fit_part, frames.gate)
    metrics[CHAMPION_KEY] = champ_ranking.summary
    evidence = gather_evidence(
        info,
        scores,
        UserScores.from_ranking(champ_ranking),
        champion_version=version,
        rule=rule,
    )
    note = None if flag is None else f"champion v{version}: {flag}"
    return replace(
        evidence, challenger_system=system, champion_system=champ_system, champion_flag=note
    )
