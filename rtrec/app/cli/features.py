"""``rtrec features apply|online|trending``."""

from __future__ import annotations

import json

import click

from rtrec.app.cli.common import handle_errors
from rtrec.config import Settings, get_settings


@click.group()
def features() -> None:
    """The Feast feature repository: register it, read features back."""


@features.command()
@handle_errors
def apply() -> None:
    """Write feature_store.yaml (Redis online, duckdb offline) and register every object."""
    from rtrec.features import apply as apply_repo

    settings = get_settings()
    repo = apply_repo(settings)
    click.echo(json.dumps({"repo": str(repo), "online_store": _online_type(settings)}))


@features.command()
@click.argument("user_ids", nargs=-1, required=True)
@handle_errors
def online(user_ids: tuple[str, ...]) -> None:
    """Print the online stream features of USER_IDS (one JSON line each)."""
    from rtrec.features import online_features

    for user, row in zip(user_ids, online_features(get_settings(), list(user_ids)), strict=True):
        click.echo(json.dumps({"user_id": user, **row}))


@features.command()
@click.option("-k", default=10, show_default=True, help="How many items.")
@handle_errors
def trending(k: int) -> None:
    """Print the k items with the highest time-decayed interaction score."""
    from rtrec.features import trending_items

    click.echo(json.dumps(trending_items(get_settings(), k)))


def _online_type(settings: Settings) -> str:
    import yaml

    path = settings.feast.repo_path / "feature_store.yaml"
    return yaml.safe_load(path.read_text())["online_store"]["type"]
