"""``rtrec serve``: start the BentoML service (foreground, or detached and tracked)."""

from __future__ import annotations

from pathlib import Path

import click

from rtrec.app.cli.common import handle_errors
from rtrec.config import Settings, get_settings
from rtrec.serving import check_bind, serve_command, serve_env


def start_detached(settings: Settings, *, timeout: float = 120.0) -> int:
    """Start the service as a managed process and wait until /readyz answers 200."""
    import httpx

    from rtrec.app.stack import start_managed

    host, port = settings.serving.host, settings.serving.port
    check_bind(settings.serving)  # no keys on an exposed address: refuse before starting

    def ready() -> bool:
        try:
            return httpx.get(f"http://{host}:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return start_managed(
        settings,
        "serving",
        serve_command(host, port),
        env=serve_env(settings.work_dir, port),
        port=(host, port),
        ready=ready,
        timeout=timeout,
    )


@click.command()
@click.option("--host", default=None, help="Bind address (default: settings).")
@click.option("--port", type=int, default=None, help="Port (default: settings).")
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Serve this bundle directory instead of the MLflow champion.",
)
@click.option("--detach", is_flag=True, help="Run in the background (stopped by `rtrec down`).")
@handle_errors
def serve(host: str | None, port: int | None, bundle: str | None, detach: bool) -> None:
    """Serve recommendations over HTTP (BentoML)."""
    import os

    overrides = {
        "RTREC_SERVING__HOST": host,
        "RTREC_SERVING__PORT": port and str(port),
        "RTREC_SERVING__BUNDLE_PATH": bundle and str(Path(bundle).resolve()),
    }
    os.environ.update({k: v for k, v in overrides.items() if v})
    get_settings.cache_clear()
    settings = get_settings()
    if detach:
        pid = start_detached(settings)
        click.echo(f"serving on http://{settings.serving.host}:{settings.serving.port} (pid {pid})")
        return
    check_bind(settings.serving)
    os.environ.update(serve_env(settings.work_dir, settings.serving.port))
    cmd = serve_command(settings.serving.host, settings.serving.port)
    os.execv(cmd[0], cmd)
