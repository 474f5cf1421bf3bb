"""The A/B test's decision: act on the readout's verdict for the registry's current pair.

:func:`decide_experiment` is what the ``rtrec_experiment_decision`` DAG runs. It judges only
the experiment of the champion and challenger the registry holds now
(``<champion>-vs-<challenger>``, the id serving stamps on each impression): a readout of an
earlier pair says nothing about the models serving today. Per verdict:

- ``challenger wins``: the challenger is promoted through the registry's promote path
  (``champion`` moves, ``challenger`` is deleted; serving hot-swaps at its next poll);
- ``champion wins``: the experiment ends, the challenger is archived (its alias deleted,
  so serving stops splitting traffic; the champion is untouched);
- ``sample ratio mismatch``: the split is broken, so no rate can be trusted: an alert goes
  to ``kafka.alerts_topic`` and nothing is decided;
- ``collecting`` / ``no difference``, or no experiment at all: nothing is done, and the
  result says why.

The result (the task's XCom) names the decision, its reason, both versions and the
experiment's readout; the decision is logged as well.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from rtrec.monitoring.alerts import alert_record, send_alert

from rtrec.config import Settings

logger = logging.getLogger(__name__)

Decision = Literal["promoted", "archived", "alerted", "none"]
ALERT_KIND = "experiment_srm"


def decide_experiment(
    settings: Settings, *, status: dict[str, Any] | None = None, registry: Any = None
) -> dict[str, Any]:
    """Decide the running A/B test (see the module docstring).

    ``status``: a readout (:func:`rtrec.serving.experiment_status`; default: read now from
    Redis). ``registry``: a :class:`rtrec.training.ModelRegistry` (default: the settings').
    A registry, Redis or broker that cannot be reached raises; nothing is half-decided,
    since each branch makes one registry change or sends one alert.
    """
    if registry is None:
        from rtrec.training import ModelRegistry

        registry = ModelRegistry(settings)
    champion, challenger = registry.champion_version(), registry.challenger_version()
    out: dict[str, Any] = {
        "champion_version": champion,
        "challenger_version": challenger,
        "experiment": None,
        "verdict": None,
        "readout": None,
    }
    if champion is None or challenger is None:
        return _done(out, "none", "the registry holds no champion and challenger pair to test")
    if settings.serving.ab_challenger_share <= 0:
        reason = "serving.ab_challenger_share is 0: no traffic is split, no A/B test runs"
        return _done(out, "none", reason)
    experiment = f"{champion}-vs-{challenger}"
    out["experiment"] = experiment
    if status is None:
        from rtrec.serving import experiment_status

        status = experiment_status(settings)
    found = next((e for e in status["experiments"] if e["experiment"] == experiment), None)
    if found is None:
        out["verdict"] = "collecting"
        return _done(out, "none", f"experiment {experiment} has no impressions yet")
    out["verdict"], out["readout"] = found["verdict"], found
    return _act(settings, registry, out, found)


def _act(
    settings: Settings, registry: Any, out: dict[str, Any], found: dict[str, Any]
) -> dict[str, Any]:
    """Apply the verdict of the current pair's readout."""
    experiment, challenger = out["experiment"], out["challenger_version"]
    verdict, evidence = found["verdict"], summary(found)
    if verdict == "challenger wins":
        reason = f"A/B {experiment}: challenger v{challenger} wins ({evidence})"
        registry.promote(challenger, reason=reason)
        return _done(out, "promoted", reason)
    if verdict == "champion wins":
        reason = f"A/B {experiment}: champion v{out['champion_version']} wins ({evidence})"
        registry.archive_challenger(challenger, reason=reason)
        return _done(out, "archived", reason)
    if verdict == "sample ratio mismatch":
        reason = (
            f"A/B {experiment}: sample ratio mismatch (users per arm against the configured "
            f"split {settings.serving.ab_challenger_share:.0%}, p={found['srm_p_value']:.2g}); "
            f"the split is broken, nothing decided ({evidence})"
        )
        record = alert_record(
            ALERT_KIND, {**found, "reason": reason}, severity="warning", experiment=experiment
        )
        send_alert(settings, record)  # logged first; a broker failure raises (retried)
        return _done(out, "alerted", reason)
    return _done(out, "none", f"A/B {experiment}: {verdict}, nothing to decide ({evidence})")


def summary(readout: dict[str, Any]) -> str:
    """One line of an experiment's evidence: exposure, lift with its interval, p-value."""
    variants = readout.get("variants", {})
    exposure = ", ".join(f"{v} {row.get('impressions', 0)} impr." for v, row in variants.items())
    lift, p = readout.get("lift"), readout.get("p_value")
    parts = [exposure or "no exposure"]
    if lift and lift.get("estimate") is not None:
        text = f"lift {lift['estimate']:+.1%}"
        if lift.get("low") is not None and lift.get("high") is not None:
            text += f" [{lift['low']:+.1%}, {lift['high']:+.1%}]"
        parts.append(text)
    if p is not None:
        parts.append(f"p={p:.3g}")
    return "; ".join(parts)


def _done(out: dict[str, Any], decision: Decision, reason: str) -> dict[str, Any]:
    out.update(decision=decision, reason=reason, promoted=decision == "promoted")
    level = logging.WARNING if decision == "alerted" else logging.INFO
    logger.log(level, "experiment decision: %s (%s)", decision, reason)
    return out
