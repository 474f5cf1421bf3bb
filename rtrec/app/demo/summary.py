"""What the demo prints at the end: a line per step with its seconds (or its outcome and
reason), quality, drift and latency, the report's path, where to look next, and last one
JSON line with every step's output (what scripts and the tests read)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from rtrec.app.demo.runner import DemoReport
from rtrec.config import Settings


def print_summary(
    settings: Settings,
    report: DemoReport,
    extras: dict[str, Any],
    keep_running: bool,
    *,
    sections: Sequence[tuple[str, list[str]]] = (),
    uis: list[tuple[str, str]] | None = None,
) -> None:
    """The summary on stderr, then the JSON line on stdout. ``sections`` (title, lines)
    follow the figures; ``uis`` replaces the embedded stack's UIs (the cluster profile's)."""
    click.secho("\nsummary", bold=True, err=True)
    for s in report.steps:
        status = s.get("status", "done")
        if status == "done":
            click.echo(f"  {s['step']:<58} {s['seconds']:>7.1f} s", err=True)
        else:
            line = f"  {s['step']:<58} {status}: {s.get('reason', '')}"
            click.secho(line, fg="red" if s.get("missed") else "yellow", err=True)
    _print_figures(extras)
    for title, lines in sections:
        click.echo(f"  {title}:", err=True)
        for line in lines:
            click.echo(f"    {line}", err=True)
    click.echo(f"  report: {extras.get('report')}", err=True)
    airflow_up = keep_running and any(
        s["step"].startswith("Airflow UI up") and s.get("status", "done") == "done"
        for s in report.steps
    )
    click.echo("  UIs:", err=True)
    if uis is None:
        uis = ui_commands(settings, airflow_up=airflow_up, serving_up=keep_running)
    for name, how in uis:
        click.echo(f"    {name + ':':<10} {how}", err=True)
    click.echo(json.dumps(summary_json(report, extras), default=str))


def _print_figures(extras: dict[str, Any]) -> None:
    """Quality before and after the shift, the drift verdict and the latency summary."""
    for label in ("before_shift", "after_shift"):
        if f"quality_{label}" in extras:
            click.echo(f"  quality {label}: {json.dumps(extras[f'quality_{label}'])}", err=True)
        elif f"quality_{label}_missing" in extras:
            why = extras[f"quality_{label}_missing"]
            click.echo(f"  quality {label}: not measured: {why}", err=True)
    drift = extras.get("drift")
    if drift:
        published = extras.get("drift_published", [None, None])
        click.echo(
            f"  drift: {drift.get('summary', drift['reason'])[:160]} (windows judged "
            f"{drift['reference_rows']} + {drift['current_rows']} events, published "
            f"{published[0]} + {published[1]})",
            err=True,
        )
    if "latency_summary" in extras:
        click.echo(f"  latency: {json.dumps(extras['latency_summary'])}", err=True)
    ab = extras.get("experiment")
    if ab:
        click.echo(f"  A/B test: {experiment_line(ab)}", err=True)


def experiment_line(ab: dict[str, Any]) -> str:
    """The A/B phase in one line: arms, click-through, lift, p, verdict and decision."""
    arms = ", ".join(
        f"{v} {a['impressions']} answers ctr {a['ctr_per_impression']['rate'] or 0:.3f}"
        for v, a in ab["variants"].items()
    )
    lift = ab.get("lift") or {}
    lifted = f"lift {lift['estimate']:+.1%}" if lift.get("estimate") is not None else "no lift"
    return (
        f"{ab['experiment']}: {arms}; {lifted}, p={ab['p_value']:.3g}; verdict "
        f"{ab['verdict']}; decision {ab.get('decision', 'not taken')}"
    )


def summary_json(report: DemoReport, extras: dict[str, Any]) -> dict[str, Any]:
    """The last line of the demo's output: every step's output and the run's verdicts."""
    drift = extras.get("drift", {})
    return {
        "steps": report.steps,
        "report": extras.get("report"),
        "latency": extras.get("latency_summary"),
        "drift": drift.get("drifted"),
        "drift_status": drift.get("status"),
        "drift_windows": {
            "judged": [drift.get("reference_rows"), drift.get("current_rows")],
            "published": extras.get("drift_published"),
        },
        "experiment": {
            k: extras["experiment"].get(k)
            for k in ("experiment", "verdict", "decision", "p_value", "lift", "sent")
        }
        if "experiment" in extras
        else None,
        "missed": report.missed,
        **({"loop_seconds": extras["loop_seconds"]} if "loop_seconds" in extras else {}),
    }


MLFLOW_UI_PORT = 15000
"""Port printed for the MLflow UI: clear of the stack's (serving 13000, Evidently 18000,
Airflow 18080) and of MLflow's 5000, which other tools often hold."""


def ui_commands(settings: Settings, *, airflow_up: bool, serving_up: bool) -> list[tuple[str, str]]:
    """Where to look after the demo: a URL for what is running, else the command that
    starts it (the venv's scripts by full path, ``RTREC_WORK_DIR`` when the demo had it)
    followed by the URL it serves."""
    import os
    import shlex
    import sys

    bin_dir = Path(sys.executable).parent
    env = [f"RTREC_WORK_DIR={settings.work_dir}"] if os.environ.get("RTREC_WORK_DIR") else []

    def cmd(script: str, *args: str, rtrec_env: bool = True) -> str:
        exe = bin_dir / script
        return shlex.join(
            [*(env if rtrec_env else []), str(exe) if exe.exists() else script, *args]
        )

    airflow = f"http://127.0.0.1:{settings.airflow.port}"
    store = str(settings.mlflow.tracking_uri)
    mlflow_args = ["ui", "--backend-store-uri", store, "--host", "127.0.0.1"]
    mlflow_args += ["--port", str(MLFLOW_UI_PORT)]
    mlflow = (
        store  # a tracking server is its own UI
        if store.startswith(("http://", "https://"))
        else f"{cmd('mlflow', *mlflow_args, rtrec_env=False)}  ->  "
        f"http://127.0.0.1:{MLFLOW_UI_PORT}"
    )
    api = f"http://{settings.serving.host}:{settings.serving.port}"
    return [
        ("Airflow", airflow if airflow_up else f"{cmd('rtrec', 'airflow', 'up')}  ->  {airflow}"),
        ("MLflow", mlflow),
        (
            "Evidently",
            f"{cmd('rtrec', 'monitor', 'ui')}  ->  http://127.0.0.1:{settings.monitoring.ui_port}",
        ),
        (
            "API docs",
            f"{api}/docs"
            if serving_up
            else f"{cmd('rtrec', 'up')} && {cmd('rtrec', 'serve', '--detach')}  ->  {api}/docs",
        ),
    ]
