"""The gate slice's judgement: every refitted model and the registered champion ranked on
it with the same seen-item mask, and the promotion gate's evidence (challenger vs champion,
per user, ``rtrec.training.gate``) from the same ranking. The gate slice is touched by no
selection step, so it is a fair judge.
"""

from __future__ import annotations

from typing import Any

from rtrec.training.evaluate import evaluate, rank
from rtrec.training.gate import GateEvidence, GateRule, SliceInfo, UserScores, gather_evidence
from rtrec.training.results import CHAMPION_KEY, MODEL_NAME
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
    settings: Settings,
    sets: TrainingSets,
    frames: Frames,
    model: Any,
    finals: dict[str, Any],
    champion: tuple[str, Any] | None,
) -> tuple[dict[str, dict[str, float]], GateEvidence]:
    """Every model's metrics on the gate slice (the champion's under ``CHAMPION_KEY``),
    and the gate's evidence."""
    seen, gate = frames.fit_part, frames.gate
    ranking = rank(model, seen, gate)
    metrics = {
        MODEL_NAME: ranking.summary,
        **{n: evaluate(m, seen, gate) for n, m in finals.items()},
    }
    span = sets.ts_range.get("gate") or [None, None]
    info = SliceInfo("gate", len(gate), len(ranking.per_user), span[0], span[1])
    rule = gate_rule(settings)
    challenger = UserScores.from_ranking(ranking)
    if champion is None:
        return metrics, gather_evidence(info, challenger, None, champion_version=None, rule=rule)
    if ranking.per_user.empty:
        raise InvalidInput(
            f"the gate slice has no user with an unseen item to judge champion v{champion[0]} "
            "against the challenger: more events are needed",
            field="gate",
        )
    version, bundle = champion
    champ_ranking = rank(bundle, seen, gate)
    metrics[CHAMPION_KEY] = champ_ranking.summary
    evidence = gather_evidence(
        info,
        challenger,
        UserScores.from_ranking(champ_ranking),
        champion_version=version,
        rule=rule,
    )
    return metrics, evidence
