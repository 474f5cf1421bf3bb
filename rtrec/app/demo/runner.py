"""The demo's step runner: each step timed, printed as it goes and recorded for the
summary and the report; a promised step that did not happen is recorded with its reason
and makes the demo exit non-zero at the end, and any other error stops the demo at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import click

C = TypeVar("C")

Step = tuple[str, Callable[[C], dict[str, Any] | None]]
"""A step's name (as the summary and the report show it) and its function of the run's
context."""


class Missed(Exception):
    """A step the demo promised did not happen (or not as promised): the demo goes on,
    shows the step with ``status`` and the reason, and exits non-zero at the end."""

    def __init__(self, reason: str, *, status: str = "skipped", **details: Any) -> None:
        super().__init__(reason)
        self.reason, self.status, self.details = reason, status, details


@dataclass
class DemoReport:
    """Every step run so far, in order, with its outcome and its output."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)
    """"step: reason" of each promised step that did not happen."""
    offsets: list[float] = field(default_factory=list)
    """Each step's start, seconds after the first step started (parallel to ``steps``):
    the report's timeline."""
    _t0: float | None = field(default=None, repr=False)

    def step(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        """Run one step. ``fn`` raises :class:`Missed` for a promised step that did not
        happen, or returns ``status`` (default "done") and ``reason`` for an outcome
        other than done that is no failure (e.g. "not promoted"); only a done step
        has seconds. Any other exception propagates: the demo stops there."""
        click.secho(f"==> {name}", fg="cyan", bold=True, err=True)
        start = time.perf_counter()
        self._t0 = start if self._t0 is None else self._t0
        self.offsets.append(round(start - self._t0, 2))
        try:
            out = fn() or {}
        except Missed as exc:
            return self._missed(name, exc)
        seconds = time.perf_counter() - start
        status = str(out.pop("status", "done"))
        took = round(seconds, 2) if status == "done" else None
        self.steps.append({"step": name, "status": status, "seconds": took, **out})
        detail = ", ".join(f"{k}={v}" for k, v in out.items() if not isinstance(v, list | dict))
        head = f"done in {seconds:.1f} s" if status == "done" else status
        click.echo(f"    {head}{': ' + detail if detail else ''}", err=True)
        return out

    def _missed(self, name: str, exc: Missed) -> dict[str, Any]:
        """Record a promised step that did not happen, with its reason and no seconds."""
        self.missed.append(f"{name}: {exc.status}: {exc.reason}")
        self.steps.append(
            {
                "step": name,
                "status": exc.status,
                "seconds": None,
                "reason": exc.reason,
                "missed": True,
            }
            | exc.details
        )
        click.secho(f"    {exc.status}: {exc.reason}", fg="red", err=True)
        return dict(exc.details)


def run_steps(report: DemoReport, context: C, steps: Sequence[Step[C]]) -> None:
    """Run ``steps`` in order on ``context``, each through :meth:`DemoReport.step`."""
    for name, fn in steps:
        report.step(name, partial(fn, context))


def fail_on_missed(report: DemoReport) -> None:
    """Exit non-zero, naming them, when steps the demo promised did not happen."""
    if report.missed:
        raise click.ClickException(
            "the demo did not do everything it promised: " + "; ".join(report.missed)
        )
