"""The DAG folder parses cleanly, with the expected graphs, and cheaply."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from rtrec.app.embedded_airflow import DAG_IDS, dags_folder


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(dags_folder()))


def test_dag_folder_imports_without_errors(bag) -> None:
    assert bag.import_errors == {}
    assert sorted(bag.dags) == sorted(DAG_IDS)


def test_no_cycles_and_valid(bag) -> None:
    for dag in bag.dags.values():
        dag.validate()
        dag.check_cycle()
        assert dag.render_template_as_native_obj, dag.dag_id
        assert len(dag.topological_sort()) == len(dag.tasks)


def _downstream(dag, task_id: str) -> set[str]:
    return set(dag.get_task(task_id).downstream_task_ids)


def test_training_dag_order(bag) -> None:
    dag = bag.dags["rtrec_training"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order == [
        "build_training_set",
        "train_two_tower",
        "evaluate_and_register",
        "promote",
        "gate_passed",
        "tell_serving",
    ]
    assert "train_two_tower" in _downstream(dag, "build_training_set")
    assert dag.schedule is None  # triggered by hand or by the drift monitor
    assert set(dag.params) >= {"data", "protocol", "epochs", "reason"}


def test_drift_monitor_is_scheduled_and_triggers_training(bag) -> None:
    dag = bag.dags["rtrec_drift_monitor"]
    assert dag.schedule == timedelta(hours=6)  # the cadence bench/drift.py measures
    assert _downstream(dag, "drift_check") == {"drifted"}
    assert _downstream(dag, "drifted") == {"trigger_training"}
    trigger = dag.get_task("trigger_training")
    assert trigger.trigger_dag_id == "rtrec_training"
    assert "reason" in trigger.conf and "drift_check" in trigger.conf["reason"]
    # The epoch cap a run of the monitor was given goes on to the training it triggers.
    assert "epochs" in dag.params and trigger.conf["epochs"] == "{{ params.epochs }}"


def test_experiment_decision_is_scheduled_and_tells_serving_only_on_promotion(bag) -> None:
    dag = bag.dags["rtrec_experiment_decision"]
    assert dag.schedule == timedelta(hours=1)
    assert [t.task_id for t in dag.topological_sort()] == [
        "experiment_decision",
        "challenger_promoted",
        "tell_serving",
    ]
    assert _downstream(dag, "experiment_decision") == {"challenger_promoted", "tell_serving"}
    assert _downstream(dag, "challenger_promoted") == {"tell_serving"}
    assert dag.get_task("experiment_decision").step == "experiment_decision"


def test_dag_files_do_no_heavy_imports() -> None:
    """Parsing must stay cheap: no torch, Spark, MLflow, Evidently or Feast at import."""
    code = (
        "import importlib.util, json, sys\n"
        f"for name in {list(DAG_IDS)!r}:\n"
        f"    path = {str(dags_folder())!r} + '/' + name + '.py'\n"
        "    spec = importlib.util.spec_from_file_location('x_' + name, path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "heavy = ['torch', 'pyspark', 'mlflow', 'evidently', 'feast', 'faiss', 'bentoml']\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
