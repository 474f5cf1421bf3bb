"""``rtrec serve``: start the BentoML service (foreground, or detached and tracked)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rtrec.cli import handle_errors
from rtrec.config import get_settings


def serve_command(host: str, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("bentoml")
    return [
        str(exe),
        "serve",
        "rtrec.serving.service:Recommender",
        "--host",
        host,
        "--port",
        str(port),
    ]


def serve_env(work_dir: Path | str, port: int) -> dict[str, str]:
    """Environment one server needs of its own: a BentoML home per work dir and port.

    BentoML keeps its Prometheus files under ``$BENTOML_HOME/prometheus_multiproc_dir``
    and wipes that folder whenever a server starts, so two servers sharing the default
    home (tests, benchmarks, a second ``rtrec serve``) silently erase each other's
    ``/metrics``. A home per server keeps every server's metrics its own.
    """
    home = Path(work_dir) / "serving" / f"bentoml-{port}"
    home.mkdir(parents=True, exist_ok=True)
    return {"BENTOML_HOME": str(home)}


def start_detached(settings, *, timeout: float = 120.0) -> int:
    """Start the service as a managed process and wait until /readyz answers 200."""
    import httpx

    from rtrec.stack import start_managed

    host, port = settings.serving.host, settings.serving.port

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
    os.environ.update(serve_env(settings.work_dir, settings.serving.port))
    cmd = serve_command(settings.serving.host, settings.serving.port)
    os.execv(cmd[0], cmd)
