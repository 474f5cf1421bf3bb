"""The cluster demo's loop for ``bench/cluster.py``: ``loop_seconds`` and where it went.

``run_loop`` runs ``rtrec demo --profile cluster`` (``--quick`` unless told otherwise) as
a user would, in a fresh work dir with free ports (the profile's settings file, every
port overridden), and keeps its output: stderr (progress and the summary) into a log
file beside the JSON, the last stdout line (the demo's JSON) parsed. The demo brings the
profile up and stops it at the end. ``loop_figures`` reads the figures from that JSON,
so a saved run of the demo (``--loop-from FILE``) gives the same figures as a fresh one.

``loop_seconds`` is the demo's own clock from its first step (the profile up) to its
last loop step (the swap on both replicas); stopping the profile and the interpreter's
start are outside it and reported apart (``profile_down_s``, ``command_s``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import cluster_ports, free_port

PROFILE_FILE = Path(__file__).resolve().parents[1] / "infra" / "rtrec.local-cluster.yaml"
DOWN_STEP = "stop the cluster profile (rtrec down --profile cluster)"


def profile_env(work: Path) -> dict[str, str]:
    """The profile's settings file with every port free now and ``work`` as work dir."""
    nodes = cluster_ports(3)
    return {
        "RTREC_CONFIG": str(PROFILE_FILE),
        "RTREC_WORK_DIR": str(work),
        "RTREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "RTREC_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "RTREC_REDIS__URL": f"redis://127.0.0.1:{nodes[0]}",
        "RTREC_CLUSTER__REDIS__PORTS": json.dumps(nodes),
        "RTREC_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "RTREC_SPARK__MASTER": f"spark://127.0.0.1:{free_port()}",
        "RTREC_CLUSTER__POSTGRES__PORT": str(free_port()),
        "RTREC_CLUSTER__SPARK__UI_PORT": str(free_port()),
        "RTREC_CLUSTER__AIRFLOW__API_URL": f"http://127.0.0.1:{free_port()}",
        "RTREC_SERVING__PORT": str(free_port()),
        "RTREC_CLUSTER__SERVING__REPLICA_PORTS": json.dumps([free_port(), free_port()]),
        "RTREC_CLUSTER__STREAM__METRICS_PORTS": json.dumps([free_port(), free_port()]),
    }


def run_loop(
    work: Path, log: Path, *, quick: bool = True, timeout_s: float = 3600
) -> dict[str, Any]:
    """``rtrec demo --profile cluster`` in ``work`` (made 0711: run as root, PostgreSQL
    runs as its own account and must enter it), its stderr into ``log``; returns its JSON
    line with ``command_s``, the exit code and the log's path."""
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o711)
    cmd = [sys.executable, "-m", "rtrec.app.cli", "demo", "--profile", "cluster"]
    cmd += ["--quick"] if quick else []
    started = time.perf_counter()
    with log.open("w") as err:
        done = subprocess.run(
            cmd,
            env={**os.environ, **profile_env(work)},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    summary = json.loads(lines[-1]) if lines else {}
    command_s = round(time.perf_counter() - started, 1)
    return {**summary, "command_s": command_s, "exit_code": done.returncode, "log": str(log)}


def read_loop(path: Path) -> dict[str, Any]:
    """The demo's JSON line from a saved output (its last line that is a JSON object)."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError(f"{path} holds no JSON line of rtrec demo --profile cluster")
    return dict(json.loads(lines[-1]))


def loop_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """``loop_seconds`` and where it went, from the cluster demo's JSON line: each step's
    seconds, each scheduled run's split (tasks vs scheduling and start-up), the Spark
    applications with their executors, and whether the loop closed (both replicas on the
    drift-retrained version, nothing missed)."""
    steps = summary.get("steps", [])
    loop = [s for s in steps if s["step"] != DOWN_STEP]
    down = [s for s in steps if s["step"] == DOWN_STEP]
    runs = [r for s in loop for r in (s.get("engine") or {}).get("airflow", [])]
    apps = [a for s in loop for a in (s.get("engine") or {}).get("spark", [])]
    swap = loop[-1] if loop else {}
    swapped = swap.get("status") == "done" and "serving_version" in swap
    return {
        "loop_seconds": summary.get("loop_seconds"),
        "loop_closed": swapped and not summary.get("missed"),
        "loop_steps_s": {s["step"]: s.get("seconds") for s in loop},
        "loop_dag_runs": [
            {"dag_id": r["dag_id"], "executor": r["executor"], **(r.get("time") or {})}
            for r in runs
        ],
        "loop_spark_apps": [{"app_id": a["app_id"], "executors": a["executors"]} for a in apps],
        "loop_swap": {k: swap.get(k) for k in ("serving_version", "seconds_to_swap")},
        "loop_missed": summary.get("missed"),
        "profile_down_s": down[0].get("seconds") if down else None,
    }
