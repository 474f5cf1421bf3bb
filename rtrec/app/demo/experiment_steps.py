"""The demo's A/B phase (the full demo on synthetic data): the drift-retrained model is
not promoted straight away; the gate sends it to an A/B test against the champion
(``training.promotion: ab``), simulated users who click what the generator says they
like after the shift drive traffic until the readout decides, and
``rtrec_experiment_decision`` promotes it or not. ``--quick`` and MovieLens data skip
the phase, saying why: the quick demo promotes on the offline gate alone, and MovieLens
users have no known taste to simulate."""

from __future__ import annotations

import os
import time
from typing import Any

import click

from rtrec.app.demo.context import DemoContext
from rtrec.app.demo.model_steps import run_dag
from rtrec.app.demo.runner import Missed

AB_SHARE = 0.5
"""Share of users the demo's A/B test gives the challenger."""
AB_MIN_EFFECT = 0.1
"""The demo's ``monitoring.min_detectable_effect``: a 10 % relative lift in click-through
is detectable with a few thousand answers per arm, a minute or two of simulated traffic
(the default 5 % needs four times as many)."""
MAX_ANSWERS = 60_000
"""Most answers the simulated users ask for before the demo reads the readout as it is."""
SIMULATED_THREADS = 4
ATTRACTION = 0.0015
"""The demo's click model attraction: about a quarter of answers clicked. The simulator's
default (0.05) has users click four answers in five, whatever they are shown, and a
rate that close to its ceiling leaves little room for a better model to show."""


def configure_ab(quick: bool, data: str) -> str | None:
    """Turn the A/B phase on for this run, before the settings are read: the gate's
    ``ab`` promotion, the split and the detectable effect go into the environment every
    process the demo starts inherits (the service, the DAG runner). Returns why the phase
    is skipped, or None. A setting the caller exported already is left as it is."""
    if quick:
        return "--quick promotes on the offline gate alone; the full demo A/B-tests the model"
    if data != "synthetic":
        return "MovieLens users have no known taste to simulate clicks from"
    os.environ.setdefault("RTREC_TRAINING__PROMOTION", "ab")
    os.environ.setdefault("RTREC_SERVING__AB_CHALLENGER_SHARE", str(AB_SHARE))
    os.environ.setdefault("RTREC_MONITORING__MIN_DETECTABLE_EFFECT", str(AB_MIN_EFFECT))
    return None


def ab_test(ctx: DemoContext) -> dict[str, Any]:
    """Simulated users on both variants until the readout decides (see the module
    docstring); the readout goes to the summary and the report."""
    if ctx.ab_skipped:
        return {"status": "skipped", "reason": ctx.ab_skipped}
    if ctx.second is None:
        raise Missed("no retraining ran, so there is no challenger to test")
    gate = ctx.second.xcom("promote")
    if not gate.get("ab_test"):
        return {"status": "not tested", "reason": gate["reason"][:160]}
    from rtrec.serving import ClickModel, run_until_decided

    settings = ctx.settings
    experiment = f"{gate['champion_version']}-vs-{gate['version']}"
    base, headers = _service(ctx)
    _wait_split(base, headers, experiment)
    truth, users = _simulated(ctx)
    decided = run_until_decided(
        settings,
        truth,
        base_url=base,
        experiment=experiment,
        api_key=headers.get("X-API-Key"),
        users=users,
        threads=SIMULATED_THREADS,
        click_model=ClickModel(attraction_scale=ATTRACTION),
        seed=settings.seed,
        max_answers=MAX_ANSWERS,
    )
    readout = decided.readout
    ctx.extras["experiment"] = {**readout, "seconds": decided.seconds, "sent": decided.sent}
    arms = readout["variants"]
    return {
        "experiment": experiment,
        "verdict": decided.verdict,
        "answers": decided.sent["answers"],
        "clicks": decided.sent["clicks"],
        "ctr": {v: round(a["ctr_per_impression"]["rate"] or 0.0, 4) for v, a in arms.items()},
        "p_value": round(readout["p_value"], 5),
        "simulated_users": len(users),
    }


def decide(ctx: DemoContext) -> dict[str, Any]:
    """``rtrec_experiment_decision`` through Airflow, on the readout the A/B step left."""
    if "experiment" not in ctx.extras:
        return {"status": "skipped", "reason": "no A/B test ran"}
    run = run_dag(ctx.runner, "rtrec_experiment_decision", {})
    out = run.xcom("experiment_decision")
    ctx.ab_decision = out
    ctx.extras["experiment"]["decision"] = out["decision"]
    return {"airflow_run": run.run_id, "decision": out["decision"], "reason": out["reason"][:200]}


def _service(ctx: DemoContext) -> tuple[str, dict[str, str]]:
    settings = ctx.settings
    keys = [k.get_secret_value() for k in settings.serving.api_keys]
    base = f"http://{settings.serving.host}:{settings.serving.port}"
    return base, {"X-API-Key": keys[0]} if keys else {}


def _wait_split(base: str, headers: dict[str, str], experiment: str, timeout_s: float = 60) -> None:
    """Until the service has loaded the challenger and splits traffic onto it."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(f"{base}/status", headers=headers, timeout=5).json()
        loaded = {m.get("version") for m in status.get("models", {}).values()}
        if set(experiment.split("-vs-")) <= loaded:
            return
        time.sleep(0.5)
    raise click.ClickException(f"the service did not load both models of {experiment}")


def _simulated(ctx: DemoContext) -> tuple[Any, list[str]]:
    """The users' taste after the shift, and who to simulate: the users active after it."""
    from rtrec.data import SyntheticConfig
    from rtrec.data.ground_truth import ground_truth

    split = ctx.need_split()
    truth = ground_truth(SyntheticConfig(**split.dataset.meta["config"]), after_shift=True)
    n = len(truth.cluster)
    active = split.after.events["user_id"].drop_duplicates().astype(str)
    users = [u for u in active if u[1:].isdigit() and int(u[1:]) < n]
    return truth, users
