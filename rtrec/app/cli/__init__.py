"""The ``rtrec`` command line: thin commands over each stage's public API.

Heavy imports (torch, feast, pyspark, mlflow, bentoml, airflow) happen inside the commands,
so ``rtrec --help`` and ``rtrec status`` stay fast. Errors from the rtrec error tree become
exit codes here and nowhere else.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from rtrec.config import get_settings
from rtrec.errors import RtrecError
from rtrec.logging import configure_logging


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn rtrec errors into a one-line message and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RtrecError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)

    return wrapper


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
        tag = " (embedded)" if r.managed else ""
        click.echo(f"[{mark}] {r.name:<{width}}  {r.address}{tag}  — {r.detail}")
    return all(r.healthy for r in rows)


@main.command()
@handle_errors
def up() -> None:
    """Start the embedded stack (broker, Redis, stores); harmless when already up."""
    from rtrec import stack

    rows = stack.up(get_settings())
    if not _print_status(rows):
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def status(as_json: bool) -> None:
    """Report each component healthy or not; exit 1 if any is down."""
    from dataclasses import asdict

    from rtrec import stack

    rows = stack.status(get_settings())
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows]))
        ok = all(r.healthy for r in rows)
    else:
        ok = _print_status(rows)
    sys.exit(0 if ok else 1)


@main.command()
@handle_errors
def down() -> None:
    """Stop exactly what `rtrec up` (and other rtrec commands) started."""
    from rtrec import stack

    stopped = stack.down(get_settings())
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


def _register_stage_commands() -> None:
    """Attach each stage's command group; a stage not yet built is simply absent."""
    import importlib

    for module, attrs in (
        ("rtrec.cli_data", ("data",)),
        ("rtrec.streaming.cli", ("stream",)),
        ("rtrec.features.cli", ("features",)),
        ("rtrec.training.cli", ("train", "model")),
        ("rtrec.serving.cli", ("serve",)),
        ("rtrec.monitoring.cli", ("monitor",)),
        ("rtrec.dags.cli", ("airflow",)),
        ("rtrec.demo", ("demo",)),
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


if __name__ == "__main__":
    main()
