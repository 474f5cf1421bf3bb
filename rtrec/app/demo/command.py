"""``rtrec demo``: the options, the steps in order, and what happens at the end whatever
happened before (the report, then stopping everything or the Airflow UI)."""

from __future__ import annotations

import logging
import time
from typing import Any

import click

from rtrec.app.demo.context import DemoContext
from rtrec.app.demo.experiment_steps import ab_test, configure_ab, decide
from rtrec.app.demo.html_report import write_report
from rtrec.app.demo.model_steps import drift, retrain, swap, train_first
from rtrec.app.demo.runner import DemoReport, Step, fail_on_missed, run_steps
from rtrec.app.demo.steps import (
    burst,
    make_data,
    serve,
    stack_up,
    stream_after,
    stream_before,
)
from rtrec.app.demo.summary import print_summary
from rtrec.config import Settings, get_settings

logger = logging.getLogger(__name__)

QUICK_MAX_EPOCHS = 10
"""Epoch cap of ``--quick`` when ``--epochs`` is not given. Every training run fits three
times (both candidate objectives on train, the chosen one refitted on train +
validation), each with its preset's full schedule: the user bag's 40 epochs are sized for
the full data set, and on the quick data set they alone made each training run take
minutes, far past the quick demo's few minutes in all. Ten is next-item's own schedule."""

STEPS: tuple[Step[DemoContext], ...] = (
    ("embedded stack up", stack_up),
    ("generate data", make_data),
    ("replay through Kafka into the feature store", stream_before),
    ("Airflow rtrec_training: Spark set, two-tower, MLflow, FAISS, gate", train_first),
    ("BentoML service up (champion from MLflow)", serve),
    ("burst of HTTP recommendations with feedback", burst),
    ("distribution shift arrives on the stream", stream_after),
    ("Airflow rtrec_drift_monitor (Evidently): alert, trigger", drift),
    ("Airflow rtrec_training (triggered by the drift)", retrain),
    ("A/B test: simulated users on champion and challenger", ab_test),
    ("Airflow rtrec_experiment_decision (readout -> promote or not)", decide),
    ("hot swap of the new champion", swap),
)
"""The loop, in order; each step's name is how the summary, the JSON line and the
report show it."""


def earlier_run(settings: Settings) -> str | None:
    """Why ``settings.work_dir`` cannot host the demo, or None: an earlier run's events
    in its offline log. The demo publishes a fixed month of events and requires its drift
    check to judge exactly those; a second run in the same work dir would find both runs'
    events in its windows ten minutes in, at the drift step. Refused before anything
    starts, saying how to start over."""
    events = settings.events_log_dir
    parts = list(events.glob("*.parquet")) if events.is_dir() else []
    if not parts:
        return None
    work = settings.work_dir
    return (
        f"{work} already holds an earlier run's offline event log ({len(parts)} files in "
        f"{events}). The demo publishes a fixed month of events and checks that drift is "
        "judged on exactly those, so it needs a work dir without events. Start over with "
        f"`rtrec down && rm -rf {work}`, or run it in another one: "
        "`RTREC_WORK_DIR=/tmp/rtrec-demo rtrec demo`."
    )


def training_epochs(quick: bool, epochs: int | None) -> int | None:
    """The epoch cap of every training run: ``--epochs`` when given, else
    :data:`QUICK_MAX_EPOCHS` with ``--quick``, else None (each preset's own schedule)."""
    if epochs is not None:
        return epochs
    return QUICK_MAX_EPOCHS if quick else None


@click.command()
@click.option(
    "--quick",
    is_flag=True,
    help=f"Small data set, training capped at {QUICK_MAX_EPOCHS} epochs; the whole loop in "
    "about 3 minutes.",
)
@click.option(
    "--data", default="synthetic", show_default=True, help="synthetic or a MovieLens path."
)
@click.option("--keep-running", is_flag=True, help="Leave the stack and the service up at the end.")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Cap on training epochs (default: each candidate objective's own schedule; "
    f"{QUICK_MAX_EPOCHS} with --quick).",
)
@click.option(
    "--profile",
    type=click.Choice(["embedded", "cluster"]),
    default="embedded",
    show_default=True,
    help="cluster: the loop on the cluster profile's engines (RTREC_CONFIG="
    "infra/rtrec.local-cluster.yaml), brought up if it is not.",
)
def demo(quick: bool, data: str, keep_running: bool, epochs: int | None, profile: str) -> None:
    """Run the whole loop on the embedded default (or the cluster profile) and write an
    HTML report."""
    from rtrec.app.dag_runs import DagRunner

    if profile == "cluster":
        _cluster_demo(quick, data, keep_running, training_epochs(quick, epochs))
        return
    ab_skipped = configure_ab(quick, data)
    get_settings.cache_clear()  # read with the A/B phase's settings, when it has one
    settings = get_settings()
    if (why := earlier_run(settings)) is not None:
        raise click.UsageError(why)
    # All DAG runs go through one warm runner (Airflow, torch, the Spark JVM loaded once).
    ctx = DemoContext(
        settings=settings,
        runner=DagRunner(settings, warm=True),
        quick=quick,
        data=data,
        epochs=training_epochs(quick, epochs),
        ab_skipped=ab_skipped,
    )
    report = DemoReport()
    ok = True
    try:
        run_steps(report, ctx, STEPS)
    except Exception:
        ok = False
        raise
    finally:
        _finish(ctx, report, keep_running=keep_running, ok=ok)
    print_summary(settings, report, ctx.extras, keep_running)
    fail_on_missed(report)


def _finish(ctx: DemoContext, report: DemoReport, *, keep_running: bool, ok: bool) -> None:
    """After the steps, whether they all ran or one failed: stop the DAG runner (killed
    after a failure), write the report, then stop everything, or with ``--keep-running``
    start the Airflow UI to browse the runs."""
    from rtrec.app import stack

    ctx.background.shutdown(wait=True)
    ctx.runner.close(kill=not ok)
    path = ctx.settings.work_dir / "reports" / f"demo-{time.strftime('%Y%m%dT%H%M%S')}.html"
    try:
        ctx.extras["report"] = str(write_report(path, report, ctx.extras))
    except Exception as exc:  # the report must not hide the real failure
        click.echo(f"report not written: {exc}", err=True)
    if not keep_running:
        report.step("stop everything", lambda: {"stopped": stack.down(ctx.settings)})
    elif ok:
        report.step("Airflow UI up (the demo's runs)", lambda: _airflow_ui(ctx))


def _airflow_ui(ctx: DemoContext) -> dict[str, Any]:
    """Start the Airflow UI (its scheduler too) on the demo's metadata DB."""
    from rtrec.app import embedded_airflow as embedded

    return {"pid": embedded.up(ctx.settings)}


def _cluster_demo(quick: bool, data: str, keep_running: bool, epochs: int | None) -> None:
    """``--profile cluster``: the loop on the profile's engines (:mod:`rtrec.app.demo.cluster`)."""
    from rtrec.app.demo.cluster_command import cluster_uis, engine_sections, run_cluster_demo

    settings = get_settings()
    report, extras = run_cluster_demo(
        settings, quick=quick, data=data, epochs=epochs, keep_running=keep_running
    )
    try:
        sections = engine_sections(report)
    except Exception as exc:  # the per-step lines only restate the JSON line below
        logger.warning("engine lines of the summary not shown: %r", exc)
        sections = [("engines, per step", [f"not shown ({exc!r}); see the JSON line"])]
    print_summary(
        settings, report, extras, keep_running, sections=sections, uis=cluster_uis(settings)
    )
    fail_on_missed(report)
