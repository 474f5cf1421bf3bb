"""Which engine did the work, read from the engines themselves, for ``rtrec demo --profile
cluster``: Spark applications and their executors from the standalone master's and the
workers' ``/json/``, Airflow runs with their executor and task times from its REST API,
the stream processors' applied counts from their ``/metrics``, the Redis Cluster's nodes
with their keys, and the serving replicas that answered (``X-Rtrec-Replica``).

The pure pieces (counting executors, splitting a run's time, the summary's lines) are
apart from the reads so unit tests can check them on recorded answers.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from rtrec.app.dag_runs import DagRunResult, SchedulerRunner
from rtrec.app.dag_runs.airflow_api import segment
from rtrec.config import Settings

# --- pure ------------------------------------------------------------------------------


def executors_per_app(worker_states: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Application id -> the workers that ran one of its executors (running or finished),
    from each worker's ``/json/``: the executors are the worker's to list, not the
    master's."""
    hosts: dict[str, list[str]] = {}
    for w in worker_states:
        for e in [*w.get("executors", []), *w.get("finishedexecutors", [])]:
            hosts.setdefault(str(e["appid"]), []).append(str(w.get("id", "?")))
    return hosts


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def time_split(run: dict[str, Any], task_instances: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a scheduled run's time went: each task's own seconds, and the rest of the
    run (queued until its end) outside any task: the scheduler's loop, queueing, and each
    task process's start before its task began."""
    tasks = {
        str(ti["task_id"]): round(float(ti["duration"]), 1)
        for ti in task_instances
        if ti.get("duration") is not None
    }
    begin = _when(run.get("queued_at")) or _when(run.get("start_date"))
    end = _when(run.get("end_date"))
    total = (end - begin).total_seconds() if begin and end else None
    inside = round(sum(tasks.values()), 1)
    return {
        "run_s": round(total, 1) if total is not None else None,
        "in_tasks_s": inside,
        "outside_tasks_s": round(total - inside, 1) if total is not None else None,
        "tasks_s": tasks,
    }


def applied_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Events each processor applied between two reads of its counter."""
    return {name: after[name] - before.get(name, 0) for name in sorted(after)}


def engine_lines(engine: dict[str, Any]) -> list[str]:
    """A step's engines, one short line each, for the summary."""
    lines = []
    if "airflow_api" in engine:
        lines.append(f"Airflow API server {engine['airflow_api']} (scheduler, DAG processor)")
    if "spark_workers" in engine:
        lines.append(
            f"Spark master {engine.get('spark_master')} with {len(engine['spark_workers'])} "
            f"workers alive: {', '.join(engine['spark_workers'])}"
        )
    if "nginx" in engine:
        lines.append(f"nginx {engine['nginx']} in front of the replicas")
    for run in engine.get("airflow", []):
        split = run.get("time") or {}
        lines.append(
            f"Airflow {run['dag_id']} run {run['run_id']} ({run['state']}) by "
            f"{run['executor']}; {split.get('run_s')} s, {split.get('in_tasks_s')} s in tasks"
        )
    for app in engine.get("spark", []):
        lines.append(
            f"Spark {app['app_id']} ({app['name']}) on {engine.get('spark_master')}: "
            f"{app['executors']} executors on {len(set(app['workers']))} workers"
        )
    if "mlflow" in engine:
        lines.append(f"MLflow server {engine['mlflow']}")
    if "processors" in engine:
        parts = ", ".join(f"{n} {c}" for n, c in engine["processors"].items())
        lines.append(f"stream processors applied: {parts}")
    if "redis_cluster" in engine:
        parts = ", ".join(f"{n['address']} {n['keys']} keys" for n in engine["redis_cluster"])
        lines.append(f"Redis Cluster nodes: {parts}")
    if "replicas" in engine:
        parts = ", ".join(
            f"{n} {'v' + str(v) if v else 'no champion yet'}" for n, v in engine["replicas"].items()
        )
        lines.append(f"replicas serving: {parts}")
    if "answered_by" in engine:
        parts = ", ".join(f"{n} {c}" for n, c in engine["answered_by"].items())
        lines.append(f"answered through nginx by: {parts}")
    return lines


# --- reads -----------------------------------------------------------------------------


class RecordingRunner(SchedulerRunner):
    """Airflow's scheduler over REST (:class:`SchedulerRunner`), keeping each finished run
    with its executor and where its time went, for the summary."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.runs: list[dict[str, Any]] = []

    def run(self, dag_id: str, conf: dict[str, Any] | None = None, **kw: Any) -> DagRunResult:
        result = super().run(dag_id, conf, **kw)
        path = f"/dags/{segment(dag_id)}/dagRuns/{segment(result.run_id)}"
        record = self.api.get(path)
        tis = self.api.all(f"{path}/taskInstances", "task_instances")
        self.runs.append(
            {
                "dag_id": dag_id,
                "run_id": result.run_id,
                "state": result.state,
                "triggered_by": record.get("triggered_by"),
                "executor": result.executor,
                "task_pids": sorted({int(t["pid"]) for t in result.tasks.values() if t["pid"]}),
                "time": time_split(record, tis),
            }
        )
        return result


def spark_apps(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every application the standalone master knows (running or completed)."""
    from rtrec.app import cluster

    state = cluster.master_json(settings) or {}
    return {str(a["id"]): a for key in ("activeapps", "completedapps") for a in state.get(key, [])}


def spark_since(settings: Settings, before: set[str]) -> list[dict[str, Any]]:
    """The applications that ran on the master since ``before`` was read, with the
    workers that ran their executors."""
    import httpx

    from rtrec.app import cluster

    state = cluster.master_json(settings) or {}
    workers = []
    for w in state.get("workers", []):
        resp = httpx.get(f"{w['webuiaddress']}/json/", timeout=5, follow_redirects=True)
        workers.append(resp.json() if resp.status_code == 200 else {})
    hosts = executors_per_app(workers)
    apps = spark_apps(settings)
    return [
        {
            "app_id": app_id,
            "name": apps[app_id].get("name"),
            "cores": apps[app_id].get("cores"),
            "state": apps[app_id].get("state"),
            "executors": len(hosts.get(app_id, [])),
            "workers": hosts.get(app_id, []),
        }
        for app_id in sorted(set(apps) - before)
    ]


def spark_workers(settings: Settings) -> list[str]:
    """The workers the standalone master lists ALIVE (their ids)."""
    from rtrec.app import cluster

    state = cluster.master_json(settings) or {}
    return [str(w["id"]) for w in state.get("workers", []) if w.get("state") == "ALIVE"]


def processors_applied(settings: Settings) -> dict[str, int]:
    """Events each stream processor has applied, from its own metrics."""
    from rtrec.app import cluster_stream

    counts = {}
    for name, port in cluster_stream.processors(settings):
        text = cluster_stream.metrics_text(port)
        counts[name] = cluster_stream.applied(text) if text is not None else 0
    return counts


def redis_nodes(settings: Settings) -> list[dict[str, Any]]:
    """Each Redis Cluster master: address, slots, and the keys it holds now."""
    import redis

    from rtrec.app import cluster_redis
    from rtrec.redis_clients import password

    secret = password(settings)
    nodes = []
    for node in cluster_redis.cluster_view(settings)["nodes"]:
        host, port = node["address"].rsplit(":", 1)
        with redis.Redis(host=host, port=int(port), password=secret, socket_timeout=2) as r:
            keys = int(r.dbsize())
        nodes.append({"address": node["address"], "slots": node["slots"], "keys": keys})
    return nodes


def key_header(settings: Settings) -> dict[str, str]:
    """The API key header for ``/status`` when keys are configured."""
    keys = [k.get_secret_value() for k in settings.serving.api_keys]
    return {"X-API-Key": keys[0]} if keys else {}


def replica_versions(settings: Settings) -> dict[str, str | None]:
    """The champion version each replica reports on its own ``/status`` (None: none)."""
    import httpx

    from rtrec.app import cluster_serving

    out: dict[str, str | None] = {}
    for name, port in cluster_serving.replicas(settings):
        url = f"http://{cluster_serving.REPLICA_HOST}:{port}/status"
        try:
            resp = httpx.get(url, headers=key_header(settings), timeout=5)
            champion = resp.json().get("models", {}).get("champion") or {}
            out[name] = champion.get("version")
        except (ValueError, httpx.HTTPError):
            out[name] = None
    return out


def answered_by(settings: Settings, requests: int = 20) -> dict[str, int]:
    """Which replicas answer ``/status`` through nginx, over ``requests`` requests."""
    import httpx

    from rtrec.app.cluster_serving import REPLICA_HEADER

    base = f"http://{settings.serving.host}:{settings.serving.port}"
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=base, headers=key_header(settings), timeout=5) as client:
        for _ in range(requests):
            seen[client.get("/status").headers.get(REPLICA_HEADER, "none")] += 1
    return dict(sorted(seen.items()))
