"""``rtrec stream replay|run``."""

from __future__ import annotations

import json
import sys

import click

from rtrec.app.cli.common import handle_errors
from rtrec.config import get_settings


@click.group()
def stream() -> None:
    """Publish events to Kafka and run the stream processor."""


@stream.command()
@click.option("--data", default="synthetic", show_default=True, help="synthetic[:small] or a path.")
@click.option("--rate", default="max", show_default=True, help="Events/s, or 'max'.")
@click.option("--speedup", type=float, default=None, help="Replay event times this much faster.")
@handle_errors
def replay(data: str, rate: str, speedup: float | None) -> None:
    """Publish a data set's events keyed by user id (with a progress bar)."""
    from rtrec.data import load_dataset
    from rtrec.streaming import replay_dataset

    ds = load_dataset(data)
    out = replay_dataset(
        get_settings(), ds, rate=None if rate == "max" else float(rate), speedup=speedup
    )
    click.echo(json.dumps(out))


@stream.command()
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics here.")
@click.option("--detach", is_flag=True, help="Run in the background (stopped by `rtrec down`).")
@handle_errors
def run(metrics_port: int | None, detach: bool) -> None:
    """Consume events into the feature store until SIGTERM."""
    settings = get_settings()
    if detach:
        from rtrec.app.stack import start_managed

        cmd = [sys.executable, "-m", "rtrec.app.cli", "stream", "run"]
        if metrics_port:
            cmd += ["--metrics-port", str(metrics_port)]
        name = f"stream-{len(list(settings.run_dir.glob('stream-*.json')))}"
        pid = start_managed(settings, name, cmd, timeout=30, ready=lambda: True)
        click.echo(f"{name} running as pid {pid}")
        return
    import signal
    import threading

    # Handlers first: a SIGTERM while Feast is still importing must stop cleanly too.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from rtrec.streaming import run_forever

    total = run_forever(settings, metrics_port=metrics_port, stop=stop)
    click.echo(json.dumps({"applied": total.applied, "dead_lettered": total.dead}))
