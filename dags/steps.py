"""The pipeline steps the operators run, as plain functions of (settings, JSON arguments).

Each step calls one stage's public API and returns a JSON-ready dict (the operator's XCom
value). Keeping them free of Airflow means the same step runs in the scheduler's worker
(``in_process``), as a command in a container or under ``spark-submit`` on a cluster
(``python -m rtrec.dags.steps STEP JSON``, see :func:`main`), and in unit tests.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rtrec.config import Settings, load_settings
from rtrec.errors import InvalidInput

logger = logging.getLogger(__name__)

StepFn = Callable[..., dict[str, Any]]


def build_training_set(
    settings: Settings, *, data: str | None = None, protocol: str = "temporal"
) -> dict[str, Any]:
    """Spark point-in-time training sets from the offline log (or ``data``, a data set)."""
    from rtrec.training import build_training_sets, event_log_for, split_config

    source = event_log_for(settings, data or None)
    sets = build_training_sets(settings, source=source, config=split_config(settings, protocol))  # type: ignore[arg-type]
    return {
        "root": str(sets.root),
        "protocol": sets.protocol,
        "counts": sets.counts,
        "history_len": sets.history_len,
        "cut_ts": sets.cut_ts,
        "data": data or "offline-event-log",
    }


def train_two_tower(
    settings: Settings, *, training_sets: str, epochs: int | None = None
) -> dict[str, Any]:
    """Select on validation, refit, judge on the gate slice beside the baselines and the
    champion, build and measure the served index, save the bundle (``fit_and_evaluate``)."""
    from rtrec.training import TrainingSets, fit_and_evaluate

    sets = TrainingSets.load(training_sets)
    run = f"{time.strftime('%Y%m%dT%H%M%S')}-airflow"
    out = fit_and_evaluate(
        settings,
        sets,
        out_dir=settings.work_dir / "training" / "runs" / run,
        epochs=epochs,
        progress=False,
    )
    split, table = out.heldout
    return {
        "bundle_dir": str(out.bundle_dir),
        "val_metrics": out.val_metrics,
        "gate_metrics": out.gate_metrics,
        "test_metrics": out.test_metrics,
        "heldout_split": split,
        "heldout_metrics": table,
        "evidence": out.evidence,
        "index": out.index,
        "ranker": out.ranker,
        "params": {k: v for k, v in out.params.items() if isinstance(v, str | int | float | bool)},
        "reports": [str(p) for p in (out.report_md, out.report_png) if p is not None],
        "protocol": sets.protocol,
        "counts": sets.counts,
        "ts_range": sets.ts_range,
    }


def evaluate_and_register(
    settings: Settings, *, fit: dict[str, Any], reason: str = ""
) -> dict[str, Any]:
    """Check the fit reported the gate's metric, log the run and register a challenger."""
    from rtrec.training import GATE_METRIC, ModelRegistry, flat_metrics, metric_key

    metrics = flat_metrics(
        fit.get("val_metrics", {}), fit.get("gate_metrics", {}), fit.get("test_metrics", {})
    )
    if GATE_METRIC not in metrics:
        raise InvalidInput(
            f"the fit reported no {GATE_METRIC}; got {sorted(metrics)}", field=GATE_METRIC
        )
    params = {
        **fit.get("params", {}),
        "protocol": fit.get("protocol", ""),
        "trigger_reason": reason[:250],
        **{f"n_{k}": v for k, v in fit.get("counts", {}).items()},
        **{f"index.{metric_key(k)}": v for k, v in fit.get("index", {}).items()},
    }
    run_id, version = ModelRegistry(settings).log_and_register(
        fit["bundle_dir"],
        params=params,
        metrics=metrics,
        report_files=[p for p in fit.get("reports", []) if Path(p).is_file()],
        tags={"trigger.reason": reason[:500]} if reason else None,
        run_name=f"two-tower-{fit.get('protocol', 'temporal')}-airflow",
    )
    return {
        "run_id": run_id,
        "version": version,
        "gate_metric": GATE_METRIC,
        "gate_value": metrics[GATE_METRIC],
    }


def promote(settings: Settings, *, version: str, fit: dict[str, Any]) -> dict[str, Any]:
    """The promotion gate on the evidence the fit gathered on the gate slice (challenger
    vs the champion it scored, per user, paired bootstrap); see ``rtrec.training.gate``."""
    from rtrec.training import GateEvidence, ModelRegistry

    if not fit.get("evidence"):
        raise InvalidInput("the fit carries no gate evidence to decide on", field="evidence")
    registry = ModelRegistry(settings)
    d = registry.promote_on_evidence(str(version), GateEvidence.from_dict(fit["evidence"]))
    return {**d.to_dict(), "champion_version": registry.champion_version()}


def tell_serving(settings: Settings, *, version: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """Wait until the service reports ``version`` as champion (it watches the alias).

    Moving the ``champion`` alias is the signal; this step only confirms the swap. A
    service that is not running is not a failure: it loads the champion when it starts.
    A service pinned to ``serving.bundle_path`` never follows the alias: nothing to wait
    for. With API keys configured ``/status`` needs one with the ``admin`` scope.
    """
    import httpx

    if settings.serving.bundle_path is not None:
        reason = "serving.bundle_path pins the served bundle: the alias is not followed"
        return {"notified": False, "serving_version": None, "reason": reason}
    url = f"http://{settings.serving.host}:{settings.serving.port}/status"
    admin = [k for k in settings.serving.api_keys if "admin" in k.scopes]
    headers = {"X-API-Key": admin[0].get_secret_value()} if admin else {}
    deadline = time.monotonic() + timeout_s
    seen: str | None = None
    while True:
        try:
            models = httpx.get(url, headers=headers, timeout=2).json().get("models", {})
            seen = (models.get("champion") or {}).get("version")
        except httpx.HTTPError as exc:
            logger.info(
                "serving not reachable at %s (%s): it loads v%s on start", url, exc, version
            )
            return {"notified": False, "serving_version": None, "reason": f"unreachable: {exc}"}
        if seen == str(version):
            return {"notified": True, "serving_version": seen, "reason": "swapped"}
        if time.monotonic() > deadline:
            return {
                "notified": False,
                "serving_version": seen,
                "reason": f"still serving v{seen} after {timeout_s:.0f} s",
            }
        time.sleep(0.5)


def materialize_features(
    settings: Settings, *, end_ms: int | None = None, days: float | None = None
) -> dict[str, Any]:
    """Backfill the online store from the offline event log (a fresh Redis, a new view).

    The stream features (users, item windows, trending) are replayed from the log's
    events before ``end_ms`` through the stream processor's own aggregation
    (``rtrec.streaming.backfill_online_store``); the batch views are loaded by Feast.
    ``days`` None (the default) replays the whole log, the only window that gives back
    what the stream wrote: ``recent_items`` and ``last_event_ms`` reach back to a user's
    first event, every user and item ever seen has a row, and trending scores sum every
    event since the trending epoch. A number replays only the last ``days`` (faster;
    those features then miss what came before).
    """
    from rtrec.features import materialize_batch_views
    from rtrec.streaming import backfill_online_store

    out = backfill_online_store(settings, end_ms=end_ms, days=days).to_dict()
    return {**out, "batch_views": materialize_batch_views(settings, out["end_ms"])}


def drift_check(
    settings: Settings,
    *,
    now_ms: int | None = None,
    reference_days: float = 7.0,
    window_days: float = 1.0,
    scores: bool = True,
    alert: bool = True,
    coverage: str | None = None,
    wait_s: float | None = None,
) -> dict[str, Any]:
    """One monitor run over the offline log: verdict recorded in Evidently, alert sent.

    The log is judged only once its watermark covers the windows (``coverage`` /
    ``wait_s``, default the ``monitoring`` settings): a check scheduled right after events
    arrived must not judge the few seconds of them still buffered by the processor. The
    result is the verdict's dict: ``status`` ("drifted", "stable", "not judged"),
    ``summary``, ``reason``, the window sizes and ``as_of`` (the watermark judged).
    """
    from rtrec.monitoring import monitor_offline_log

    verdict = monitor_offline_log(
        settings,
        now_ms=now_ms,
        reference_days=reference_days,
        window_days=window_days,
        scores=scores,
        alert=alert,
        coverage=coverage,  # type: ignore[arg-type]  # validated by the monitor
        wait_s=wait_s,
    )
    if not verdict.judged:
        logger.warning("drift check: %s", verdict.summary)
    return verdict.to_dict()


def experiment_decision(settings: Settings) -> dict[str, Any]:
    """Act on the A/B readout of the registry's champion and challenger: promote, archive,
    alert on a sample ratio mismatch, or nothing (``rtrec.monitoring.decide_experiment``)."""
    from rtrec.monitoring import decide_experiment

    return decide_experiment(settings)


STEPS: dict[str, StepFn] = {
    "build_training_set": build_training_set,
    "train_two_tower": train_two_tower,
    "evaluate_and_register": evaluate_and_register,
    "promote": promote,
    "tell_serving": tell_serving,
    "materialize_features": materialize_features,
    "drift_check": drift_check,
    "experiment_decision": experiment_decision,
}


def run_step(
    name: str, arguments: dict[str, Any], *, settings: Settings | None = None
) -> dict[str, Any]:
    """Run one step by name (what every operator and the command entry point call).

    The result is made JSON-native (numpy scalars become floats): XComs then read the
    same in every run mode and in every consumer, not as Airflow's tagged numpy objects.
    """
    if name not in STEPS:
        raise InvalidInput(f"unknown step {name!r}; expected one of {sorted(STEPS)}", field="step")
    started = time.perf_counter()
    result = STEPS[name](settings or load_settings(), **arguments)
    logger.info("step %s done in %.1f s", name, time.perf_counter() - started)
    return json.loads(json.dumps(result, default=str))


RESULT_PREFIX = "RTREC_STEP_RESULT "
"""Marks the result line of ``python -m rtrec.dags.steps`` among a job's other output."""


def main(argv: list[str] | None = None) -> int:
    """``python -m rtrec.dags.steps STEP 'JSON ARGS'``: one step in a container or Spark job."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write(
            f"usage: python -m rtrec.dags.steps STEP JSON_ARGS (steps: {sorted(STEPS)})\n"
        )
        return 2
    from rtrec.logging import configure_logging

    configure_logging("INFO")
    result = run_step(args[0], json.loads(args[1]))
    sys.stdout.write(RESULT_PREFIX + json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
