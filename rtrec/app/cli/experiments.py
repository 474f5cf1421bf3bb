"""``rtrec experiment status``: the A/B readout, as JSON or a table."""

from __future__ import annotations

import json
from typing import Any

import click

from rtrec.app.cli.common import handle_errors
from rtrec.config import get_settings


@click.group("experiment")
def experiment() -> None:
    """Online experiments: champion against challenger on live traffic."""


@experiment.command()
@click.option("--json", "as_json", is_flag=True, help="Print the readout as JSON.")
@handle_errors
def status(as_json: bool) -> None:
    """Per experiment and variant: exposure, click-through with 95 % intervals, lift,
    p-value (two-proportion z-test per impression), the SRM check and the verdict."""
    from redis.exceptions import RedisError

    from rtrec.errors import Unavailable
    from rtrec.monitoring import experiment_status

    settings = get_settings()
    try:
        out = experiment_status(settings)
    except RedisError as exc:
        host, port = settings.redis.host_port
        why = f"experiment aggregates unavailable (Redis {host}:{port}): {exc}"
        raise Unavailable(why) from exc
    if as_json:
        click.echo(json.dumps(out))
        return
    if not out["experiments"]:
        click.echo("no experiment has impressions yet")
    for exp in out["experiments"]:
        _print_experiment(exp)
    waiting = ", ".join(f"{k} {v}" for k, v in sorted(out["unattributed"].items()))
    click.echo(f"unattributed outcomes: {waiting or 'none'}")
    click.echo(f"test: {out['test']}")


def _pct(rate: dict[str, Any]) -> str:
    if rate["rate"] is None:
        return "-"
    if rate["low"] is None:
        return f"{rate['rate']:.2%}"
    return f"{rate['rate']:.2%} [{rate['low']:.2%}, {rate['high']:.2%}]"


def _print_experiment(exp: dict[str, Any]) -> None:
    color = {"challenger wins": "green", "champion wins": "red"}.get(exp["verdict"], "yellow")
    click.echo(f"experiment {exp['experiment']}: " + click.style(exp["verdict"], fg=color))
    head = f"  {'variant':<11} {'impr.':>8} {'users':>7} {'clicks':>7}  {'CTR/impression':<26}"
    click.echo(f"{head} {'CTR/user':<26} {'purch.':>6} {'MRR':>6}")
    for name, v in exp["variants"].items():
        mrr = f"{v['mrr']:.3f}" if v["mrr"] is not None else "-"
        click.echo(
            f"  {name:<11} {v['impressions']:>8} {v['users']:>7} {v['clicks']:>7}  "
            f"{_pct(v['ctr_per_impression']):<26} {_pct(v['ctr_per_user']):<26} "
            f"{v['purchases']:>6} {mrr:>6}"
        )
    lift = exp["lift"]
    said = (
        f"lift {lift['estimate']:+.1%} [{lift['low']:+.1%}, {lift['high']:+.1%}]"
        if lift
        else "lift -"
    )
    click.echo(
        f"  {said}, p = {exp['p_value']:.3g}; SRM p = {exp['srm_p_value']:.3g}"
        + (" (MISMATCH)" if exp["srm"] else "")
    )
