"""The cluster demo's run and end: :func:`run_cluster_demo` (what ``rtrec demo --profile
cluster`` and a test on an already running profile call), and what its summary adds to
the embedded one's: per step the engines that did the work, and where the time went."""

from __future__ import annotations

import time
from typing import Any

import click

from rtrec.app.demo.cluster import CLUSTER_STEPS, check_settings
from rtrec.app.demo.context import DemoContext
from rtrec.app.demo.engines import RecordingRunner, engine_lines
from rtrec.app.demo.runner import DemoReport, run_steps
from rtrec.config import Settings

STOP_STEP = "stop the cluster profile (rtrec down --profile cluster)"


def run_cluster_demo(
    settings: Settings,
    *,
    quick: bool = True,
    data: str = "synthetic",
    epochs: int | None = None,
    keep_running: bool = False,
) -> tuple[DemoReport, dict[str, Any]]:
    """The loop on the cluster profile (brought up if it is not); returns the report and
    the extras the summary shows. ``keep_running`` leaves the profile up (a test package
    sharing one profile); otherwise it is stopped at the end, as the embedded demo stops
    its stack. An error stops the loop and propagates, after the same end."""
    check_settings(settings)
    ctx = DemoContext(
        settings=settings,
        runner=RecordingRunner(settings),
        profile="cluster",
        quick=quick,
        data=data,
        epochs=epochs,
        ab_skipped="the cluster demo promotes on the offline gate; its loop ends in the swap",
    )
    report = DemoReport()
    started = time.perf_counter()
    try:
        run_steps(report, ctx, CLUSTER_STEPS)
    finally:
        ctx.extras["loop_seconds"] = round(time.perf_counter() - started, 1)
        _finish(ctx, report, keep_running=keep_running)
    return report, ctx.extras


def _finish(ctx: DemoContext, report: DemoReport, *, keep_running: bool) -> None:
    """Close the runner, write the HTML report, and stop the profile unless told not to."""
    from rtrec.app import cluster
    from rtrec.app.demo.html_report import write_report

    ctx.background.shutdown(wait=True)
    ctx.runner.close()
    path = ctx.settings.work_dir / "reports" / f"demo-cluster-{time.strftime('%Y%m%dT%H%M%S')}.html"
    try:
        ctx.extras["report"] = str(write_report(path, report, ctx.extras))
    except Exception as exc:  # the report must not hide the real failure
        click.echo(f"report not written: {exc}", err=True)
    ctx.extras["left_running"] = keep_running
    if not keep_running:
        report.step(STOP_STEP, lambda: {"stopped": cluster.down(ctx.settings)})


def engine_sections(report: DemoReport) -> list[tuple[str, list[str]]]:
    """The summary's extra sections: each step's engines, then where the time went (each
    step's seconds, and each scheduled run's split between its tasks and the rest)."""
    engines_text: list[str] = []
    timing: list[str] = []
    for s in report.steps:
        engine = s.get("engine") or {}
        lines = engine_lines(engine)
        if lines:
            engines_text.append(s["step"])
            engines_text += [f"  {line}" for line in lines]
        for run in engine.get("airflow", []):
            split = run.get("time") or {}
            tasks = ", ".join(f"{t} {v:.0f} s" for t, v in split.get("tasks_s", {}).items())
            timing.append(
                f"{run['dag_id']} {split.get('run_s')} s = {split.get('in_tasks_s')} s in "
                f"tasks ({tasks}) + {split.get('outside_tasks_s')} s scheduling and "
                "task start-up"
            )
    return [("engines, per step", engines_text), ("where the scheduled runs' time went", timing)]


def cluster_uis(settings: Settings) -> list[tuple[str, str]]:
    """Where to look after the demo: the profile's own UIs (up only with --keep-running)."""
    from rtrec.app import cluster

    host = cluster.host_port(settings.spark.master, 7077)[0]
    return [
        ("Airflow", settings.cluster.airflow.api_url),
        ("MLflow", str(settings.mlflow.tracking_uri)),
        ("Spark", f"http://{host}:{settings.cluster.spark.ui_port}"),
        ("API docs", f"http://{settings.serving.host}:{settings.serving.port}/docs"),
    ]
