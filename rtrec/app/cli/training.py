"""``rtrec train`` and ``rtrec model``: thin commands over the pipeline and the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rtrec.app.cli.common import handle_errors
from rtrec.config import get_settings


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _print_summary(result: Any) -> None:
    """Metrics table (model vs baselines), the registered version and the gate's decision."""
    split, table = result.heldout
    names = list(table)
    keys = sorted({k for m in table.values() for k in m})
    rows = [[k, *(f"{table[n].get(k, float('nan')):.4f}" for n in names)] for k in keys]
    n = result.sets.counts[split]
    click.echo(f"\n{split} metrics ({result.protocol} protocol, {n} events, full ranking):")
    click.echo(_table(rows, ["metric", *names]))
    click.echo(f"\n{result.gate_metric}: {result.gate_value:.4f}")
    index = result.fit.index
    if index:
        recalls = ", ".join(f"{k} {v:.4f}" for k, v in index.items() if k.startswith("recall@"))
        click.echo(f"served index: {index.get('kind')}, {recalls} ({index.get('source')})")
    for label, path in (("report", result.report_md), ("plot", result.report_png)):
        if path is not None:
            click.echo(f"{label}: {path}")
    if result.version is None:
        click.echo("not registered (--no-register)")
        return
    click.echo(f"registered version {result.version} (run {result.run_id}) as challenger")
    decision = result.decision
    verdict = (
        click.style("promoted to champion", fg="green")
        if decision.promoted
        else "kept as challenger"
    )
    click.echo(f"promotion gate: {verdict} — {decision.reason}")


@click.command("train")
@click.option(
    "--data",
    default=None,
    help="synthetic | synthetic:small | saved data set dir | MovieLens dir. "
    "Default: the offline event log written by the stream processor.",
)
@click.option("--epochs", type=int, default=None, help="Training epochs (default: the trainer's).")
@click.option(
    "--protocol",
    type=click.Choice(["temporal", "random"]),
    default="temporal",
    show_default=True,
    help="temporal: train on the past, test on the future; random: per-user 75/25.",
)
@click.option("--no-register", is_flag=True, help="Evaluate only; log nothing to MLflow.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@handle_errors
def train(
    data: str | None, epochs: int | None, protocol: str, no_register: bool, as_json: bool
) -> None:
    """Build training sets, train the two-tower model, evaluate against baselines, register."""
    from rtrec.training import train as run_pipeline

    result = run_pipeline(
        get_settings(),
        data=data,
        epochs=epochs,
        protocol=protocol,  # type: ignore[arg-type]
        register=not no_register,
        progress=not as_json,
    )
    if as_json:
        click.echo(json.dumps(result.summary(), default=str))
    else:
        _print_summary(result)


@click.group("model")
def model() -> None:
    """Inspect registered model versions and move the champion alias."""


def _registry() -> Any:
    from rtrec.training import ModelRegistry

    return ModelRegistry(get_settings())


@model.command("list")
@handle_errors
def list_versions() -> None:
    """Registered versions, newest first: aliases, the gate's record (slice size, both
    scores, the gain and its interval) and the decision.

    ``challenger`` marks a version the gate has not decided yet or the last one it refused;
    a promoted version drops it, so after a promotion there may be none."""
    from rtrec.training import GATE_METRIC, TAG_DECISION

    infos = _registry().versions()
    if not infos:
        click.echo("no registered versions")
        return
    rows = [
        [
            i.version,
            ",".join(i.aliases) or "-",
            f"{i.metrics[GATE_METRIC]:.4f}" if GATE_METRIC in i.metrics else "-",
            _vs(i.tags),
            _gain(i.tags),
            f"{i.tags.get('gate.rows', '-')} / {i.tags.get('gate.users', '-')}",
            i.tags.get(TAG_DECISION, "-"),
            i.created.strftime("%Y-%m-%d %H:%M"),
        ]
        for i in infos
    ]
    header = [
        "version",
        "aliases",
        GATE_METRIC,
        "vs champion",
        "gain [95% CI]",
        "gate rows / users",
        "decision",
        "created (UTC)",
    ]
    click.echo(_table(rows, header))
    if not any("challenger" in i.aliases for i in infos):
        click.echo(
            "no challenger: no version is waiting for the gate, and none was refused "
            "since the last promotion"
        )


def _vs(tags: dict[str, str]) -> str:
    if "gate.champion_version" not in tags:
        return "-"
    return f"v{tags['gate.champion_version']} {float(tags['gate.champion']):.4f}"


def _gain(tags: dict[str, str]) -> str:
    if "gate.gain" not in tags:
        return "-"
    gain, lo, hi = (float(tags[f"gate.{k}"]) for k in ("gain", "ci_low", "ci_high"))
    return f"{gain:+.1%} [{lo:+.1%}, {hi:+.1%}] (margin {float(tags['gate.margin']):.1%})"


@model.command("show")
@click.argument("version", default="champion")
@handle_errors
def show(version: str) -> None:
    """Metrics and tags of VERSION (a number or an alias; default champion)."""
    reg = _registry()
    number = reg.resolve(version)
    info = next(i for i in reg.versions() if i.version == number)
    click.echo(json.dumps({**info.__dict__, "created": info.created.isoformat()}, indent=2))


@model.command("promote")
@click.argument("version")
@click.option("--reason", default="manual promotion", show_default=True)
@handle_errors
def promote(version: str, reason: str) -> None:
    """Make VERSION the champion (recorded with REASON as version tags)."""
    reg = _registry()
    previous = reg.champion_version()
    decision = reg.promote(reg.resolve(version), reason=reason)
    click.echo(f"champion: v{previous or '-'} -> v{decision.version}")


@model.command("challenge")
@click.argument("version")
@click.option("--reason", default="manual A/B test", show_default=True)
@handle_errors
def challenge(version: str, reason: str) -> None:
    """Make VERSION the challenger of an A/B test against the champion (serving splits
    traffic at serving.ab_challenger_share; the rtrec_experiment_decision DAG decides)."""
    reg = _registry()
    number = reg.resolve(version)
    reg.start_experiment(number, reason=reason)
    click.echo(f"challenger: v{number} against champion v{reg.champion_version() or '-'}")


@model.command("rollback")
@click.option("--reason", default="manual rollback", show_default=True)
@handle_errors
def rollback(reason: str) -> None:
    """Move the champion back to the version it replaced."""
    reg = _registry()
    current = reg.champion_version()
    restored = reg.rollback(reason=reason)
    click.echo(f"champion: v{current} -> v{restored}")


@model.command("download")
@click.argument("version", default="champion")
@click.option("--dst", type=click.Path(path_type=Path), default=None)
@handle_errors
def download(version: str, dst: Path | None) -> None:
    """Fetch VERSION's bundle directory; prints its path."""
    click.echo(str(_registry().download_bundle(version, dst=dst)))
