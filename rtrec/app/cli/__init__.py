"""The ``rtrec`` command line: thin commands over each stage's public API.

The app layer assembles it: this module holds the root group and the stack commands
(``up``, ``status``, ``down``); each stage's command group lives beside it
(``rtrec.app.cli.streaming`` ...), so no stage imports the CLI or the stack supervisor.
Heavy imports (torch, feast, pyspark, mlflow, bentoml, airflow) happen inside the commands,
so ``rtrec --help`` and ``rtrec status`` stay fast. Errors from the rtrec error tree become
exit codes in :func:`rtrec.app.cli.common.handle_errors` and nowhere else.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from rtrec.app.cli.common import handle_errors
from rtrec.config import get_settings
from rtrec.logging import configure_logging


@click.group()
@click.option("--log-level", default="WARNING", show_default=True, help="Python log level.")
@click.option("--json-logs/--plain-logs", default=False, help="Log as JSON lines.")
def main(log_level: str, json_logs: bool) -> None:
    """rtrec: real-time recommendations from Kafka events to a BentoML API."""
    configure_logging(log_level.upper(), json_lines=json_logs)


def _print_status(rows: list[Any]) -> bool:
    width = max(len(r.name) for r in rows)
    for r in rows:
        mark = click.style(" ok ", fg="green") if r.healthy else click.style("DOWN", fg="red")
        tag = " (started here)" if r.managed else ""
        click.echo(f"[{mark}] {r.name:<{width}}  {r.address}{tag}  — {r.detail}")
    return all(r.healthy for r in rows)


PROFILE = click.option(
    "--profile",
    type=click.Choice(["embedded", "cluster"]),
    default="embedded",
    show_default=True,
    help="cluster: also PostgreSQL, an MLflow server, a Spark standalone cluster and "
    "Airflow's scheduler, DAG processor and API server "
    "(settings: RTREC_CONFIG=infra/rtrec.local-cluster.yaml).",
)


@main.command()
@PROFILE
@handle_errors
def up(profile: str) -> None:
    """Start the embedded stack (broker, Redis, stores); harmless when already up."""
    from rtrec.app import cluster, stack

    rows = (cluster.up if profile == "cluster" else stack.up)(get_settings())
    if not _print_status(rows):
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@PROFILE
@handle_errors
def status(as_json: bool, profile: str) -> None:
    """Report each component healthy or not; exit 1 if any is down."""
    from dataclasses import asdict

    from rtrec.app import cluster, stack

    rows = (cluster.status if profile == "cluster" else stack.status)(get_settings())
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows]))
        ok = all(r.healthy for r in rows)
    else:
        ok = _print_status(rows)
    sys.exit(0 if ok else 1)


@main.command()
@PROFILE
@handle_errors
def down(profile: str) -> None:
    """Stop exactly what `rtrec up` (and other rtrec commands) started."""
    from rtrec.app import cluster, stack

    stopped = (cluster.down if profile == "cluster" else stack.down)(get_settings())
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


def _register_stage_commands() -> None:
    """Attach each stage's command group; a stage not yet built is simply absent."""
    import importlib

    for module, attrs in (
        ("rtrec.app.cli.data", ("data",)),
        ("rtrec.app.cli.streaming", ("stream",)),
        ("rtrec.app.cli.features", ("features",)),
        ("rtrec.app.cli.training", ("train", "model")),
        ("rtrec.app.cli.serving", ("serve",)),
        ("rtrec.app.cli.monitoring", ("monitor",)),
        ("rtrec.app.cli.experiments", ("experiment",)),
        ("rtrec.app.cli.dags", ("airflow",)),
        ("rtrec.app.demo", ("demo",)),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue
            raise
        for attr in attrs:
            cmd = getattr(mod, attr, None)
            if isinstance(cmd, click.Command):
                main.add_command(cmd)


_register_stage_commands()
