"""``rtrec airflow up|down|status``: the embedded Airflow standalone with rtrec's DAGs."""

from __future__ import annotations

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
