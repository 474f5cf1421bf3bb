"""The demo's steps through Airflow: the first training, the drift check after the
shift, the training it triggers and the hot swap of the new champion. Each takes the
run's :class:`DemoContext` and returns the step's output."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from rtrec.app.demo.context import DemoContext
from rtrec.app.demo.runner import Missed

if TYPE_CHECKING:
    from rtrec.app.dag_runs import DagRunner, DagRunResult, SchedulerRunner

DAY_MS = 86_400_000

MODELS = ("two_tower", "two_stage")
"""The models whose gate-slice figures the training steps report (two-stage: when the
bundle carries a ranker)."""

SWAP_TIMEOUT_S = 60
"""How long the swap step waits for the service to report the promoted version."""


def in_windows(ts: np.ndarray, now_ms: int, reference_days: float, window_days: float) -> list[int]:
    """How many of the published events' times fall in the monitor's reference and
    current windows (``rtrec.monitoring.split_windows``'s bounds)."""
    cut = now_ms - int(window_days * DAY_MS)
    start = cut - int(reference_days * DAY_MS)
    return [int(((ts >= start) & (ts < cut)).sum()), int(((ts >= cut) & (ts < now_ms)).sum())]


def run_dag(
    runner: DagRunner | SchedulerRunner, dag_id: str, conf: dict[str, Any] | None, **kw: Any
) -> DagRunResult:
    """One DAG run through Airflow (the warm ``rtrec.app.dag_runs.DagRunner``); a failed
    run stops the demo."""
    run = runner.run(dag_id, conf, **kw)
    if not run.ok:
        failed = [t for t, v in run.tasks.items() if v["state"] not in ("success", "skipped")]
        raise click.ClickException(f"{dag_id} run {run.state}: tasks {failed}; log {run.log}")
    return run


def metrics_row(fit: dict[str, Any]) -> dict[str, Any]:
    """Held-out metrics per model from the train task's XCom (the gate slice: the most
    recent period, untouched by selection; every model refitted on train + validation)."""
    heldout = fit["heldout_metrics"]
    return {
        name: {k: round(v, 4) for k, v in m.items() if k in ("ndcg@10", "recall@10", "map@10")}
        for name, m in heldout.items()
    }


def train_first(ctx: DemoContext) -> dict[str, Any]:
    """The ``rtrec_training`` DAG on the events before the shift: v1, the champion."""
    ctx.wait_runner()
    run = run_dag(ctx.runner, "rtrec_training", {"epochs": ctx.epochs, "reason": "demo: first"})
    ctx.first = run
    fit = run.xcom("train_two_tower")
    quality = ctx.extras["quality_before_shift"] = metrics_row(fit)
    ctx.extras["ranker_before_shift"] = fit.get("ranker") or {}
    ctx.extras["gates"].append(("first training", run.xcom("promote")))
    return {
        "airflow_run": run.run_id,
        "version": run.xcom("evaluate_and_register")["version"],
        "promoted": run.xcom("promote")["promoted"],
        **{f"{m}_{k}": v for m in MODELS for k, v in quality.get(m, {}).items()},
    }


def drift(ctx: DemoContext) -> dict[str, Any]:
    """The ``rtrec_drift_monitor`` DAG after the shift. It must judge exactly the events
    published for its windows; otherwise the step (and the retraining it should
    trigger) is missed, with the reason."""
    split = ctx.need_split()
    # The monitor's run one day after the shift: the latest day against the week
    # before it (the window the champion was trained on).
    conf = {"now_ms": split.cut + DAY_MS, "window_days": 1.0, "reference_days": 7.0}
    conf["training_epochs"] = ctx.epochs  # the cap of the training it triggers
    published = np.concatenate(
        [
            split.before.events["ts"].to_numpy(np.int64),
            split.after.events["ts"].to_numpy(np.int64),
            np.asarray(ctx.feedback_ts, np.int64),
        ]
    )
    expected = in_windows(published, conf["now_ms"], conf["reference_days"], conf["window_days"])
    ctx.extras["drift_published"] = expected
    run = run_dag(ctx.runner, "rtrec_drift_monitor", conf)
    verdict = ctx.extras["drift"] = run.xcom("drift_check")
    ctx.retrain_queued = bool(run.queued.get("rtrec_training"))
    out = _drift_output(run.run_id, verdict, expected, retrain_queued=ctx.retrain_queued)
    _require_whole_windows(ctx, verdict, expected, out)
    if not ctx.retrain_queued:
        ctx.no_retrain = f"no drift detected after the shift: {verdict['summary']}"
    return out


def _drift_output(
    run_id: str, verdict: dict[str, Any], expected: list[int], *, retrain_queued: bool
) -> dict[str, Any]:
    """The drift step's output: the verdict, the events judged against those published."""
    return {
        "airflow_run": run_id,
        "status": "done",
        "verdict": verdict["status"],
        "drifted": verdict["drifted"],
        "drift_share": round(verdict["drift_share"], 2),
        "retraining_triggered": retrain_queued,
        "reference_rows": verdict["reference_rows"],
        "current_rows": verdict["current_rows"],
        "published_reference_rows": expected[0],
        "published_current_rows": expected[1],
        "offline_log": (verdict.get("as_of") or {}).get("mode"),
        "reason": verdict["reason"][:120],
    }


def _require_whole_windows(
    ctx: DemoContext, verdict: dict[str, Any], expected: list[int], out: dict[str, Any]
) -> None:
    """Raise :class:`Missed` (and say why no retraining follows) when the check judged
    nothing, or other events than those published for its windows."""
    # The step's "reason" says why it was missed; the verdict's own reason stays beside it.
    details = {k: v for k, v in out.items() if k not in ("status", "reason")}
    details["verdict_reason"] = out["reason"]
    if not verdict["judged"]:
        ctx.no_retrain = verdict["summary"]  # "not judged: <why>"
        raise Missed(ctx.no_retrain, **details)
    judged = [verdict["reference_rows"], verdict["current_rows"]]
    if judged != expected:
        ctx.no_retrain = (
            f"the drift check judged {judged[0]} + {judged[1]} events, "
            f"{expected[0]} + {expected[1]} were published for its windows"
        )
        raise Missed(ctx.no_retrain, status="incomplete", **details)


def retrain(ctx: DemoContext) -> dict[str, Any]:
    """The ``rtrec_training`` run the drift monitor queued, with its reason in the conf;
    its last task waits until the live service reports the new champion."""
    if not ctx.retrain_queued:
        why = ctx.no_retrain or "the drift monitor triggered nothing"
        ctx.extras["quality_after_shift_missing"] = f"no retraining ran ({why})"
        raise Missed(f"not triggered: {why}")
    # Under Airflow's scheduler (cluster) the triggered run is already under way with the
    # conf its trigger gave it (the cap included); the in-process runner takes more conf.
    more = None if ctx.profile == "cluster" else {"epochs": ctx.epochs}
    run = run_dag(ctx.runner, "rtrec_training", more, queued=True)
    ctx.second = run
    fit = run.xcom("train_two_tower")
    ctx.extras["quality_after_shift"] = metrics_row(fit)
    ctx.extras["ranker_after_shift"] = fit.get("ranker") or {}
    decision = run.xcom("promote")
    ctx.extras["gates"].append(("retraining after the drift", decision))
    return {
        "airflow_run": run.run_id,
        "trigger": str(run.conf.get("reason", ""))[:80],
        "version": decision["version"],
        "promoted": decision["promoted"],
        "gate_systems": _systems(decision.get("evidence") or {}),
        "reason": decision["reason"][:120],
    }


def _systems(evidence: dict[str, Any]) -> str:
    """What the gate compared: ``two_stage vs two_stage``, or ``... vs retrieval`` where
    the champion had no usable ranker (the evidence's flag says why)."""
    return f"{evidence.get('challenger_system')} vs {evidence.get('champion_system')}"


def swap(ctx: DemoContext) -> dict[str, Any]:
    """Wait until the service serves the promoted version; a refused model is the gate's
    call (or the A/B test's, where one ran), shown as "not promoted" with its reason, not
    a failure."""
    import httpx

    second = ctx.second
    if second is None:
        raise Missed("no retraining ran, so there is no new model to swap in")
    decision = second.xcom("promote")
    if ctx.ab_decision is not None:  # the A/B test decided, not the offline gate
        ab = ctx.ab_decision
        decision = {"promoted": ab["promoted"], "reason": ab["reason"]}
        decision["version"] = ab["challenger_version"]
    if not decision["promoted"]:
        return {"status": "not promoted", "reason": decision["reason"]}
    told = second.xcom("tell_serving") or {}
    base = f"http://{ctx.settings.serving.host}:{ctx.settings.serving.port}"
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while time.monotonic() < deadline:
        models = httpx.get(f"{base}/status", timeout=5).json()["models"]
        if models.get("champion", {}).get("version") == decision["version"]:
            return {"serving_version": decision["version"], "told_by_dag": told.get("notified")}
        time.sleep(0.5)
    raise click.ClickException(
        f"the service did not pick up the new champion within {SWAP_TIMEOUT_S} s"
    )
