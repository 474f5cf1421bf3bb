"""Last in the package: ``up`` again starts nothing, and ``down`` leaves no process behind."""

from __future__ import annotations

import time

import psutil
from click.testing import CliRunner

from rtrec.app import cluster_airflow
from rtrec.app.cli import main
from rtrec.app.processes import alive, managed_names, managed_pid
from rtrec.config import Settings
from tests.cluster.support import airflow_processes, work_dir_strays

NEEDED = (
    "postgres",
    "mlflow-server",
    "spark-master",
    "spark-worker-1",
    *cluster_airflow.PROCESSES,
    "nginx",
    "serving-1",
    "serving-2",
    "redis-node-1",
    "stream-processor-2",
)


def test_up_again_starts_nothing_and_down_leaves_no_process(settings: Settings) -> None:
    names = managed_names(settings)
    for needed in NEEDED:
        assert needed in names
    pids = {name: managed_pid(settings, name) for name in names}
    assert all(pids.values()), pids
    again = CliRunner().invoke(main, ["up", "--profile", "cluster"])
    assert again.exit_code == 0, again.output
    assert {name: managed_pid(settings, name) for name in names} == pids, "up restarted one"
    tree = {
        p.pid
        for pid in pids.values()
        for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    }
    # PostgreSQL's backends leave the postmaster's process group: list them by parent.
    tree |= {p.pid for p in psutil.Process(pids["postgres"]).children()}
    started = time.monotonic()
    out = CliRunner().invoke(main, ["down", "--profile", "cluster"])
    print(f"rtrec down --profile cluster: {time.monotonic() - started:.1f} s")
    assert out.exit_code == 0, out.output
    left = sorted(pid for pid in tree if alive(pid))
    assert not left, f"still running after down: {left}"
    assert managed_names(settings) == []
    strays = work_dir_strays(settings)
    assert not strays, f"processes naming the work dir after down: {strays}"
    assert not airflow_processes(settings), "Airflow processes (tasks included) after down"
