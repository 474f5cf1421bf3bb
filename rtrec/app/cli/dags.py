"""``rtrec airflow up|down|status``: the embedded Airflow standalone with rtrec's DAGs; ``rtrec
airflow run``: one DAG run, in process or (``--profile cluster``) by Airflow's scheduler."""

from __future__ import annotations

import json

import click

from rtrec.app.cli.common import handle_errors
from rtrec.config import get_settings


@click.group("airflow")
def airflow() -> None:
    """Embedded Airflow (standalone, SQLite): its scheduler runs rtrec's DAGs and yours."""


@airflow.command()
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for health.")
@handle_errors
def up(timeout: float) -> None:
    """db migrate, reserialize the DAGs, start the standalone; harmless when running.

    The scheduler runs rtrec's DAGs and those in ``<airflow home>/dags``, unpaused.
    """
    from rtrec.app import embedded_airflow as embedded

    settings = get_settings()
    pid = embedded.up(settings, timeout_s=timeout)
    click.echo(f"airflow standalone pid {pid}: http://127.0.0.1:{settings.airflow.port}")
    click.echo(f"DAGs: {', '.join(embedded.DAG_IDS)} (folder {embedded.dags_folder()})")
    click.echo(f"your DAGs: {embedded.user_dags_folder(settings)} (same scheduler)")


@airflow.command()
@handle_errors
def down() -> None:
    """Stop the standalone with SIGINT so it stops its own workers."""
    from rtrec.app import embedded_airflow as embedded

    stopped = embedded.down(get_settings())
    click.echo("airflow stopped" if stopped else "airflow was not running")


@airflow.command()
@handle_errors
def status() -> None:
    """Healthy or not; exit 1 when not."""
    from rtrec.app import embedded_airflow as embedded

    settings = get_settings()
    ok = embedded.healthy(settings)
    click.echo(f"airflow {'healthy' if ok else 'DOWN'} at {embedded.health_url(settings)}")
    raise SystemExit(0 if ok else 1)


@airflow.command("run")
@click.argument("dag_id")
@click.option("--conf", "conf_json", default="{}", show_default=True, help="Run conf (JSON).")
@click.option(
    "--profile",
    type=click.Choice(["embedded", "cluster"]),
    default="embedded",
    show_default=True,
    help="embedded: Airflow's in-process runner here; cluster: triggered over the REST API "
    "of cluster.airflow.api_url and executed by its scheduler.",
)
@click.option("--timeout", default=1800.0, show_default=True, help="Seconds to wait.")
@handle_errors
def run(dag_id: str, conf_json: str, profile: str, timeout: float) -> None:
    """Run DAG_ID once and wait for its end; exit 1 unless it succeeded."""
    from rtrec.app.dag_runs import dag_runner
    from rtrec.errors import InvalidInput

    try:
        conf = json.loads(conf_json)
    except ValueError as exc:
        raise InvalidInput(f"--conf is not JSON: {exc}", field="conf") from None
    with dag_runner(get_settings(), "cluster" if profile == "cluster" else "embedded") as runner:
        result = runner.run(dag_id, conf, timeout_s=timeout)
    click.echo(f"{dag_id} run {result.run_id}: {result.state} in {result.seconds:.1f} s")
    click.echo(f"executor: {result.executor}")
    for task_id, task in result.tasks.items():
        click.echo(f"  {task_id}: {task['state']}")
    click.echo(f"log: {result.log}")
    raise SystemExit(0 if result.ok else 1)
