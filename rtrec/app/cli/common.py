"""What every command group of the CLI shares: rtrec errors become exit codes here.

A module of its own, not the root group's, so a stage's command group imports it without
importing the group that imports it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from rtrec.errors import RtrecError


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn rtrec errors into a one-line message and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RtrecError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)

    return wrapper
