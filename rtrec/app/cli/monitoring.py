"""``rtrec monitor check|ui``: one drift check now; the Evidently UI over the workspace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rtrec.app.cli.common import handle_errors
from rtrec.config import Settings, get_settings
from rtrec.monitoring import COVERAGE_MODES

UI_NAME = "evidently-ui"
"""Managed-process name of the UI (``<work_dir>/run/evidently-ui.json``)."""


@click.group("monitor")
def monitor() -> None:
    """Drift monitoring (Evidently): checks, dashboards, alerts."""


@monitor.command()
@click.option("--now-ms", type=int, default=None, help="Window end (ms); default newest event.")
@click.option("--reference-days", type=float, default=7.0, show_default=True)
@click.option("--window-days", type=float, default=1.0, show_default=True)
@click.option("--scores/--no-scores", default=True, help="Score windows with the champion.")
@click.option("--alert/--no-alert", default=True, help="Publish an alert on drift.")
@click.option(
    "--coverage",
    type=click.Choice(COVERAGE_MODES),
    default=None,
    help="wait: until the offline log's watermark covers the windows; as_of: judge as of "
    "the watermark now; unchecked: the log as it is. Default: monitoring.offline_coverage.",
)
@click.option(
    "--wait-s",
    type=click.FloatRange(min=0),
    default=None,
    help="Longest wait for the watermark (default: monitoring.offline_wait_s).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@handle_errors
def check(
    now_ms: int | None,
    reference_days: float,
    window_days: float,
    scores: bool,
    alert: bool,
    coverage: str | None,
    wait_s: float | None,
    as_json: bool,
) -> None:
    """Check the offline event log for drift; exit 0 stable, 10 drifted, 11 not judged
    (a window too small); 4 when the log did not cover the windows in time."""
    from rtrec.monitoring import monitor_offline_log

    verdict = monitor_offline_log(
        get_settings(),
        now_ms=now_ms,
        reference_days=reference_days,
        window_days=window_days,
        scores=scores,
        alert=alert,
        coverage=coverage,  # type: ignore[arg-type]  # one of COVERAGE_MODES (click)
        wait_s=wait_s,
    )
    if as_json:
        click.echo(json.dumps(verdict.to_dict(), default=str))
    else:
        color = {"drifted": "red", "stable": "green"}.get(verdict.status, "yellow")
        mark = click.style(verdict.status.upper(), fg=color)
        click.echo(f"[{mark}] drift share {verdict.drift_share:.2f} — {verdict.summary}")
        windows = verdict.windows or {}
        click.echo(
            f"  windows: reference {verdict.reference_rows} rows "
            f"{_span(windows.get('reference'))}, current {verdict.current_rows} rows "
            f"{_span(windows.get('current'))}"
        )
        as_of = verdict.as_of or {}
        click.echo(f"  offline log ({as_of.get('mode', '?')}): {as_of.get('note', '')}")
        for c in verdict.columns:
            click.echo(
                f"  {c.column:<20} {c.method:<28} {c.score:.3f}{'  drifted' if c.drifted else ''}"
            )
    sys.exit(10 if verdict.drifted else 0 if verdict.judged else 11)


def _span(bounds: list[int] | None) -> str:
    if not bounds:
        return ""
    from datetime import UTC, datetime

    start, end = (
        datetime.fromtimestamp(b / 1000, tz=UTC).isoformat(timespec="minutes") for b in bounds
    )
    return f"[{start}, {end})"


def ui_command(workspace: Path, port: int) -> list[str]:
    """``evidently ui`` of the venv running rtrec, bound to loopback."""
    exe = Path(sys.executable).parent / "evidently"
    return [
        str(exe) if exe.exists() else "evidently",
        "ui",
        "--workspace",
        str(workspace),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]


def start_ui(
    settings: Settings, *, port: int | None = None, timeout_s: float = 60
) -> tuple[int, str]:
    """Start the Evidently UI over the workspace (idempotent); returns (pid, url)."""
    from rtrec.app import stack
    from rtrec.monitoring import ensure_project

    port = port or settings.monitoring.ui_port
    ensure_project(settings)  # the dashboard exists even before the first check
    pid = stack.start_managed(
        settings,
        UI_NAME,
        ui_command(Path(str(settings.monitoring.workspace)), port),
        port=("127.0.0.1", port),
        env={"DO_NOT_TRACK": "1"},
        timeout=timeout_s,
    )
    return pid, f"http://127.0.0.1:{port}"


@monitor.command()
@click.option("--port", type=int, default=None, help="Default: settings.monitoring.ui_port.")
@click.option("--stop", is_flag=True, help="Stop a UI started by this command.")
@handle_errors
def ui(port: int | None, stop: bool) -> None:
    """Serve the Evidently UI (projects, drift dashboards) in the background."""
    from rtrec.app import stack

    settings = get_settings()
    if stop:
        stopped = stack.stop_managed(settings, UI_NAME)
        click.echo("evidently ui stopped" if stopped else "evidently ui was not running")
        return
    pid, url = start_ui(settings, port=port)
    click.echo(f"evidently ui pid {pid}: {url} (stop: rtrec monitor ui --stop)")
