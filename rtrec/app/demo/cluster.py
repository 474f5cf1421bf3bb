"""``rtrec demo --profile cluster``: the same loop on the cluster profile's engines.

events -> two stream processors (one consumer group) -> Redis Cluster features ->
``rtrec_training`` triggered over Airflow's REST API and run by its scheduler
(LocalExecutor), its training set built by executors on the Spark standalone workers ->
the MLflow server's registry -> both serving replicas load the champion over HTTP ->
recommendations through nginx -> the shift -> ``rtrec_drift_monitor`` under the scheduler
triggers ``rtrec_training`` itself -> both replicas hot-swap.

The embedded demo's steps are reused wherever they fit (data, the burst, the shift, the
DAG steps, which take the run's runner: here Airflow's scheduler); only what differs is
here: the profile up, the replay (the processors already run), the replicas loading the
champion and the swap on every replica. Each step's output carries ``engine``: which
engine did the work, read from the engine (:mod:`rtrec.app.demo.engines`).

The A/B phase is left out: the profile's Airflow and replicas were started with their
settings, so the gate promotes on its own (``training.promotion`` as set) and the loop
ends in the hot swap. The end is the embedded demo's: everything stopped
(``rtrec down --profile cluster``), or left up with ``--keep-running``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from rtrec.app.demo import engines
from rtrec.app.demo.context import DemoContext
from rtrec.app.demo.model_steps import drift, retrain, train_first
from rtrec.app.demo.runner import Missed, Step
from rtrec.app.demo.steps import burst, make_data, stream_after, wait_logged
from rtrec.config import Settings
from rtrec.errors import ConfigError, Unavailable

LOAD_TIMEOUT_S = 180
"""How long the replicas get to report the promoted champion (each watches the alias
every ``serving.watch_interval_s`` and then downloads the bundle over HTTP)."""

StepFn = Callable[[DemoContext], dict[str, Any] | None]


def check_settings(settings: Settings) -> None:
    """The loop needs the profile's settings and replicas that follow the champion alias."""
    from rtrec.app import cluster

    cluster.check_profile(settings)
    if settings.serving.bundle_path is not None:
        raise ConfigError(
            "serving.bundle_path is set: the replicas serve that bundle and never follow "
            "the champion, so the demo's hot swap cannot happen (unset RTREC_SERVING__BUNDLE_PATH)"
        )


def profile_up(ctx: DemoContext) -> dict[str, Any]:
    """Bring the profile up unless every component is already healthy (idempotent)."""
    from rtrec.app import cluster

    settings = ctx.settings
    before = cluster.status(settings)
    was_up = all(r.healthy for r in before)
    rows = before if was_up else cluster.up(settings)
    done: Future[None] = Future()
    done.set_result(None)  # no runner to start: Airflow's scheduler is the runner
    ctx.runner_ready = done
    ctx.extras["profile_was_up"] = was_up
    bad = [f"{r.name}: {r.detail}" for r in rows if not r.healthy]
    if bad:
        raise Unavailable(f"the cluster profile is not healthy: {'; '.join(bad)}")
    return {
        "was_up": was_up,
        "components": len(rows),
        "engine": {
            "spark_master": settings.spark.master,
            "spark_workers": engines.spark_workers(settings),
            "mlflow": str(settings.mlflow.tracking_uri),
            "airflow_api": settings.cluster.airflow.api_url,
            "redis_cluster": engines.redis_nodes(settings),
            "nginx": f"{settings.serving.host}:{settings.serving.port}",
            "replicas": engines.replica_versions(settings),
        },
    }


def replay(ctx: DemoContext) -> dict[str, Any]:
    """The events before the shift, published keyed by user; the profile's two processors
    (one consumer group) apply them into the Redis Cluster and the offline log."""
    from rtrec.streaming import replay_dataset

    sent = replay_dataset(ctx.settings, ctx.need_split().before, progress=True)
    return {
        "published": int(sent["published"]),
        "produce_events_per_s": round(sent["events_per_s"]),
        **wait_logged(ctx.settings),
    }


def with_processors(step: StepFn) -> StepFn:
    """``step`` with the events each processor applied meanwhile and the Redis Cluster's
    nodes and keys after it."""

    def run(ctx: DemoContext) -> dict[str, Any]:
        before = engines.processors_applied(ctx.settings)
        out = step(ctx) or {}
        engine = {
            "processors": engines.applied_delta(before, engines.processors_applied(ctx.settings)),
            "redis_cluster": engines.redis_nodes(ctx.settings),
        }
        return {**out, "engine": engine}

    run.__doc__ = step.__doc__
    return run


def with_airflow(step: StepFn) -> StepFn:
    """``step`` (DAG runs through the scheduler) with each run's executor and times, the
    Spark applications that ran meanwhile, and the MLflow server."""

    def run(ctx: DemoContext) -> dict[str, Any]:
        runner = ctx.runner
        if not isinstance(runner, engines.RecordingRunner):
            raise ConfigError("the cluster demo's steps need its recording scheduler runner")
        apps, seen = set(engines.spark_apps(ctx.settings)), len(runner.runs)
        try:
            out = step(ctx) or {}
        except Missed as exc:
            exc.details["engine"] = _airflow_engine(ctx, runner, apps, seen)
            raise
        return {**out, "engine": _airflow_engine(ctx, runner, apps, seen)}

    run.__doc__ = step.__doc__
    return run


def _airflow_engine(
    ctx: DemoContext, runner: engines.RecordingRunner, apps: set[str], seen: int
) -> dict[str, Any]:
    return {
        "airflow": runner.runs[seen:],
        "spark_master": ctx.settings.spark.master,
        "spark": engines.spark_since(ctx.settings, apps),
        "mlflow": str(ctx.settings.mlflow.tracking_uri),
    }


def with_replicas(step: StepFn) -> StepFn:
    """``step`` (requests through nginx) with the replicas that answered them."""

    def run(ctx: DemoContext) -> dict[str, Any]:
        out = step(ctx) or {}
        return {**out, "engine": {"answered_by": out.get("replicas", {})}}

    run.__doc__ = step.__doc__
    return run


def _wait_replicas(settings: Settings, version: str) -> dict[str, Any]:
    """Until every replica reports ``version`` as champion on its own ``/status``; the
    seconds each took, counted from the call."""
    started, loaded = time.monotonic(), {}
    deadline = started + LOAD_TIMEOUT_S
    while True:
        versions = engines.replica_versions(settings)
        for name, v in versions.items():
            if v == version and name not in loaded:
                loaded[name] = round(time.monotonic() - started, 1)
        if len(loaded) == len(versions):
            return {"replicas": versions, "seconds_to_load": loaded}
        if time.monotonic() > deadline:
            raise Unavailable(
                f"replicas still serving {versions} {LOAD_TIMEOUT_S} s after v{version} "
                f"became champion on {settings.mlflow.tracking_uri}"
            )
        time.sleep(0.5)


def _replicas_engine(settings: Settings, got: dict[str, Any]) -> dict[str, Any]:
    return {
        "mlflow": str(settings.mlflow.tracking_uri),
        "replicas": got["replicas"],
        "answered_by": engines.answered_by(settings),
    }


def replicas_load(ctx: DemoContext) -> dict[str, Any]:
    """Both replicas load the champion from the MLflow server (they watch its alias)."""
    from rtrec.training import ModelRegistry

    champion = ModelRegistry(ctx.settings).champion_version()
    if champion is None:
        raise Unavailable(f"no champion on {ctx.settings.mlflow.tracking_uri} after training")
    got = _wait_replicas(ctx.settings, str(champion))
    out = {"version": str(champion), "seconds_to_load": got["seconds_to_load"]}
    return out | {"engine": _replicas_engine(ctx.settings, got)}


def swap_all(ctx: DemoContext) -> dict[str, Any]:
    """Every replica serves the version the drift-triggered run promoted; a refused
    model is the gate's call, shown as "not promoted" with its reason."""
    if ctx.second is None:
        raise Missed("no retraining ran, so there is no new model to swap in")
    decision = ctx.second.xcom("promote")
    if not decision["promoted"]:
        return {"status": "not promoted", "reason": decision["reason"]}
    got = _wait_replicas(ctx.settings, str(decision["version"]))
    out = {"serving_version": str(decision["version"]), "seconds_to_swap": got["seconds_to_load"]}
    return out | {"engine": _replicas_engine(ctx.settings, got)}


CLUSTER_STEPS: tuple[Step[DemoContext], ...] = (
    ("cluster profile up (or found up)", profile_up),
    ("generate data", make_data),
    ("replay: Kafka -> two processors -> Redis Cluster", with_processors(replay)),
    ("Airflow rtrec_training (scheduler, Spark standalone)", with_airflow(train_first)),
    ("both replicas load the champion from the MLflow server", replicas_load),
    ("burst of HTTP recommendations through nginx, feedback", with_replicas(burst)),
    ("distribution shift arrives on the stream", with_processors(stream_after)),
    ("Airflow rtrec_drift_monitor (scheduler): alert, trigger", with_airflow(drift)),
    ("Airflow rtrec_training (triggered by the drift)", with_airflow(retrain)),
    ("hot swap on both serving replicas", swap_all),
)
"""The loop on the cluster profile, in order (see the module docstring)."""
