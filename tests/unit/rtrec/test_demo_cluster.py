"""The cluster demo's pure pieces: executors counted from the workers' own records, a
scheduled run's time split, the summary's engine lines and sections, the burst's replica
tally, the settings it refuses, and bench/cluster.py's loop figures from a demo's JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cluster_loop import DOWN_STEP, loop_figures, read_loop
from rtrec.app.demo.burst import _Outcome, _tally
from rtrec.app.demo.cluster_command import STOP_STEP, engine_sections
from rtrec.app.demo.engines import applied_delta, engine_lines, executors_per_app, time_split
from rtrec.app.demo.runner import DemoReport
from rtrec.config import load_settings
from rtrec.errors import ConfigError

WORKERS = [
    {
        "id": "worker-1",
        "executors": [{"id": 0, "appid": "app-2"}],
        "finishedexecutors": [{"id": 0, "appid": "app-1"}],
    },
    {"id": "worker-2", "executors": [], "finishedexecutors": [{"id": 1, "appid": "app-1"}]},
]

RUN = {
    "queued_at": "2026-12-04T13:00:00Z",
    "start_date": "2026-12-04T13:00:05Z",
    "end_date": "2026-12-04T13:02:00Z",
}
TIS = [
    {"task_id": "build_training_set", "duration": 30.04},
    {"task_id": "train_two_tower", "duration": 60.0},
    {"task_id": "tell_serving", "duration": None},  # skipped: never ran
]


def test_executors_are_counted_per_application_from_every_worker() -> None:
    hosts = executors_per_app(WORKERS)
    assert hosts == {"app-1": ["worker-1", "worker-2"], "app-2": ["worker-1"]}
    assert executors_per_app([{"id": "w", "executors": []}]) == {}


def test_a_runs_time_splits_into_its_tasks_and_the_rest() -> None:
    split = time_split(RUN, TIS)
    assert split["run_s"] == 120.0  # from queued, not from start
    assert split["tasks_s"] == {"build_training_set": 30.0, "train_two_tower": 60.0}
    assert split["in_tasks_s"] == 90.0 and split["outside_tasks_s"] == 30.0
    unfinished = time_split({"queued_at": RUN["queued_at"]}, TIS)
    assert unfinished["run_s"] is None and unfinished["outside_tasks_s"] is None


def test_applied_delta_is_per_processor() -> None:
    assert applied_delta({"p1": 10, "p2": 5}, {"p1": 30, "p2": 5, "p3": 2}) == {
        "p1": 20,
        "p2": 0,
        "p3": 2,
    }


def _engine() -> dict:
    return {
        "airflow": [
            {
                "dag_id": "rtrec_training",
                "run_id": "manual__1",
                "state": "success",
                "executor": "LocalExecutor (scheduler job 3 on host)",
                "time": time_split(RUN, TIS),
            }
        ],
        "spark_master": "spark://127.0.0.1:7077",
        "spark": [
            {"app_id": "app-1", "name": "rtrec", "executors": 2, "workers": ["w1", "w2"]},
        ],
        "mlflow": "http://127.0.0.1:15000",
        "redis_cluster": [{"address": "127.0.0.1:1", "slots": 5461, "keys": 7}],
        "replicas": {"serving-1": "2", "serving-2": "2"},
        "answered_by": {"serving-1": 10, "serving-2": 10},
    }


def test_engine_lines_name_each_engine_and_what_it_did() -> None:
    lines = engine_lines(_engine())
    assert lines[0].startswith("Airflow rtrec_training run manual__1 (success) by LocalExecutor")
    assert "120.0 s, 90.0 s in tasks" in lines[0]
    assert "Spark app-1 (rtrec) on spark://127.0.0.1:7077: 2 executors on 2 workers" in lines
    assert "MLflow server http://127.0.0.1:15000" in lines
    assert "Redis Cluster nodes: 127.0.0.1:1 7 keys" in lines
    assert "replicas serving: serving-1 v2, serving-2 v2" in lines
    assert "answered through nginx by: serving-1 10, serving-2 10" in lines
    assert engine_lines({}) == []


def test_the_profiles_own_engines_have_lines_too() -> None:
    up = {
        "spark_master": "spark://127.0.0.1:7077",
        "spark_workers": ["worker-1", "worker-2"],
        "mlflow": "http://127.0.0.1:15000",
        "airflow_api": "http://127.0.0.1:18080",
        "redis_cluster": [{"address": "127.0.0.1:1", "slots": 5461, "keys": 0}],
        "nginx": "127.0.0.1:13000",
        "replicas": {"serving-1": None, "serving-2": None},
    }
    lines = engine_lines(up)
    assert lines[0] == "Airflow API server http://127.0.0.1:18080 (scheduler, DAG processor)"
    assert "Spark master spark://127.0.0.1:7077 with 2 workers alive: worker-1, worker-2" in lines
    assert "replicas serving: serving-1 no champion yet, serving-2 no champion yet" in lines
    report = DemoReport()
    report.steps = [{"step": "up", "status": "done", "seconds": 60.0, "engine": up}]
    (_, engines), (_, timing) = engine_sections(report)
    assert engines == ["up", *[f"  {line}" for line in lines]] and timing == []


def test_sections_list_engines_per_step_and_each_runs_time() -> None:
    report = DemoReport()
    report.steps = [
        {"step": "train", "status": "done", "seconds": 130.0, "engine": _engine()},
        {"step": "data", "status": "done", "seconds": 1.0},
    ]
    (_, engines), (_, timing) = engine_sections(report)
    assert engines[0] == "train" and all(line.startswith("  ") for line in engines[1:])
    assert "data" not in engines
    assert timing == [
        "rtrec_training 120.0 s = 90.0 s in tasks (build_training_set 30 s, train_two_tower "
        "60 s) + 30.0 s scheduling and task start-up"
    ]


def test_the_burst_tallies_replicas_only_behind_a_balancer() -> None:
    behind = [
        _Outcome(1.0, 200, False, False, 0, r) for r in ("serving-1", "serving-2", "serving-1")
    ]
    assert _tally(3, behind).figures["replicas"] == {"serving-1": 2, "serving-2": 1}
    alone = [_Outcome(1.0, 200, False, False, 0) for _ in range(3)]
    assert "replicas" not in _tally(3, alone).figures


def test_the_cluster_demo_refuses_replicas_pinned_to_a_bundle(tmp_path: Path) -> None:
    from rtrec.app.demo.cluster import check_settings

    profile = {"mlflow": {"tracking_uri": "http://127.0.0.1:1"}, "spark": {"master": "spark://h:1"}}
    check_settings(load_settings(work_dir=tmp_path, **profile))
    pinned = load_settings(work_dir=tmp_path, serving={"bundle_path": str(tmp_path)}, **profile)
    with pytest.raises(ConfigError, match="bundle_path"):
        check_settings(pinned)
    with pytest.raises(ConfigError, match="cluster profile"):
        check_settings(load_settings(work_dir=tmp_path))


def _summary(swap: dict, missed: list[str]) -> dict:
    return {
        "steps": [
            {"step": "up", "status": "done", "seconds": 60.0},
            {"step": "train", "status": "done", "seconds": 130.0, "engine": _engine()},
            {"step": "swap", **swap},
            {"step": DOWN_STEP, "status": "done", "seconds": 12.0},
        ],
        "missed": missed,
        "loop_seconds": 400.0,
    }


def test_loop_figures_come_from_the_demos_own_json(tmp_path: Path) -> None:
    assert DOWN_STEP == STOP_STEP  # the bench finds the demo's own step by its name
    swap = {"status": "done", "seconds": 4.0, "serving_version": "2", "seconds_to_swap": {}}
    figures = loop_figures(_summary(swap, []))
    assert figures["loop_seconds"] == 400.0 and figures["loop_closed"] is True
    assert figures["loop_steps_s"] == {"up": 60.0, "train": 130.0, "swap": 4.0}
    assert figures["profile_down_s"] == 12.0
    assert figures["loop_spark_apps"] == [{"app_id": "app-1", "executors": 2}]
    assert figures["loop_dag_runs"][0]["in_tasks_s"] == 90.0
    refused = loop_figures(_summary({"status": "not promoted", "seconds": None}, []))
    assert refused["loop_closed"] is False
    missed = loop_figures(_summary(swap, ["drift: skipped: not judged"]))
    assert missed["loop_closed"] is False
    saved = tmp_path / "demo.out"
    saved.write_text("progress\n" + json.dumps(_summary(swap, [])) + "\n")
    assert loop_figures(read_loop(saved)) == figures
    (tmp_path / "empty.out").write_text("no json here\n")
    with pytest.raises(ValueError, match="no JSON line"):
        read_loop(tmp_path / "empty.out")
