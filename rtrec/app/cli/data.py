"""``rtrec data``: generate or load data sets into the work dir."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rtrec.app.cli.common import handle_errors
from rtrec.config import get_settings


@click.group()
def data() -> None:
    """Generate synthetic data or load MovieLens into a saved data set."""


@data.command()
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Target directory.")
@click.option("--small", is_flag=True, help="~100k events (tests, quick demos).")
@click.option("--events", type=int, default=None, help="Number of events.")
@click.option("--seed", type=int, default=None)
@click.option(
    "--shift-at", type=float, default=None, help="Shift the distribution at this fraction of time."
)
@handle_errors
def generate(
    out: Path | None, small: bool, events: int | None, seed: int | None, shift_at: float | None
) -> None:
    """Generate a seeded synthetic data set (catalog, users, time-ordered events)."""
    from rtrec.data import ShiftConfig, SyntheticConfig
    from rtrec.data import generate as gen

    settings = get_settings()
    cfg = SyntheticConfig.small() if small else SyntheticConfig()
    updates: dict[str, object] = {"seed": settings.seed if seed is None else seed}
    if events is not None:
        updates["n_events"] = events
    if shift_at is not None:
        updates["shift"] = ShiftConfig(at_fraction=shift_at)
    ds = gen(cfg.model_copy(update=updates))
    target = ds.save(out or settings.data_dir / "synthetic")
    click.echo(json.dumps({"path": str(target), **ds.summary()}, default=str))


@data.command()
@click.argument("source")
@click.option("--out", type=click.Path(path_type=Path), default=None)
@handle_errors
def load(source: str, out: Path | None) -> None:
    """Load SOURCE (MovieLens dir/file or a saved data set) and save it in the work dir."""
    from rtrec.data import load_dataset

    ds = load_dataset(source)
    target = ds.save(out or get_settings().data_dir / Path(source).name)
    click.echo(json.dumps({"path": str(target), **ds.summary()}, default=str))
