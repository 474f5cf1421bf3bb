"""The Airflow Variables that say how the operators run their steps, and the argument
summary they log; split from :mod:`rtrec.dags.operators` to keep that module to the
operators themselves."""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import Variable
from airflow.sdk.exceptions import AirflowFailException


def _variable(key: str, default: Any) -> Any:
    """An Airflow Variable, or ``default`` when it is unset.

    ``Variable.get`` returns the default for an unset variable and, outside a task (unit
    tests, plain Python), reads only ``AIRFLOW_VAR_*`` environment variables; anything
    else it raises (access denied by the execution API, a broken secrets backend) must
    fail the task, not quietly switch how steps run.
    """
    return Variable.get(key, default=default)


def _command_variable() -> list[str] | None:
    """The Airflow Variable ``rtrec_step_command`` (a JSON list of strings), if set."""
    raw = _variable("rtrec_step_command", None)
    if raw in (None, ""):
        return None
    try:
        command = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise AirflowFailException(
            f"Airflow Variable rtrec_step_command is not JSON ({exc}): {raw!r}"
        ) from exc
    if not (isinstance(command, list) and command and all(isinstance(c, str) for c in command)):
        raise AirflowFailException(
            f"Airflow Variable rtrec_step_command must be a JSON list of strings, got {raw!r}"
        )
    return command


def _brief(args: dict[str, Any], limit: int = 300) -> str:
    """The step's arguments for the log, each value cut to ``limit`` characters (a fit
    result passed downstream is kilobytes)."""
    parts = []
    for key, value in args.items():
        text = json.dumps(value, default=str)
        parts.append(f"{key}={text if len(text) <= limit else text[:limit] + '...'}")
    return ", ".join(parts) or "no arguments"
