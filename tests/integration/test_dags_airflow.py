"""``rtrec airflow up|down``: the embedded standalone starts healthy with the DAGs and stops
with its whole process group (SIGINT)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rtrec.app import embedded_airflow as embedded
from rtrec.config import get_settings, load_settings
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]


def _json_list(stdout: str) -> list:
    """The JSON list an ``airflow ... -o json`` printed after its warnings ([] for none)."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("[{") or ln.strip() == "[]"]
    return json.loads(lines[-1]) if lines else []


def _live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies (an unreaped zombie is gone)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def test_airflow_up_lists_dags_and_down_stops_everything(tmp_path: Path) -> None:
    from rtrec.app import stack
    from rtrec.app.cli import main

    env = {
        "RTREC_WORK_DIR": str(tmp_path),
        "RTREC_AIRFLOW__PORT": str(free_port()),
        "RTREC_AIRFLOW__PARALLELISM": "2",
    }
    settings = load_settings(work_dir=tmp_path, airflow={"port": int(env["RTREC_AIRFLOW__PORT"])})
    runner = CliRunner()
    get_settings.cache_clear()
    try:
        up = runner.invoke(main, ["airflow", "up"], env=env)
        assert up.exit_code == 0, up.output
        pid = stack.managed_pid(settings, embedded.NAME)
        assert pid is not None and embedded.healthy(settings)
        again = runner.invoke(main, ["airflow", "up"], env=env)  # idempotent
        assert again.exit_code == 0 and f"pid {pid}" in again.output

        listed = _json_list(embedded.airflow_cli(settings, "dags", "list", "-o", "json"))
        assert sorted(d["dag_id"] for d in listed) == sorted(embedded.DAG_IDS)
        errors = _json_list(
            embedded.airflow_cli(settings, "dags", "list-import-errors", "-o", "json")
        )
        assert errors == []
        assert runner.invoke(main, ["airflow", "status"], env=env).exit_code == 0
    finally:
        down = runner.invoke(main, ["airflow", "down"], env=env)
        get_settings.cache_clear()
    assert down.exit_code == 0 and "airflow stopped" in down.output
    deadline = time.monotonic() + 10
    while _live_group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _live_group_members(pid) == []
    assert stack.managed_pid(settings, embedded.NAME) is None
