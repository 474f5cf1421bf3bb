"""Operators: templated fields, arguments, XCom results, in-process and command runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rtrec.dags import steps
from rtrec.dags.operators import (
    BuildTrainingSetOperator,
    DriftCheckOperator,
    ExperimentDecisionOperator,
    PromoteOperator,
    TrainTwoTowerOperator,
    is_drifted,
    is_promoted,
)

from rtrec.errors import InvalidInput


class FakeTI:
    """Records xcom_push calls the way a task instance would store them."""

    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def test_template_fields_are_the_step_arguments() -> None:
    op = TrainTwoTowerOperator(task_id="t", training_sets="{{ ti.xcom_pull('b') }}", epochs=None)
    assert set(op.template_fields) == {"training_sets", "epochs"}
    assert op.arguments() == {"training_sets": "{{ ti.xcom_pull('b') }}"}  # None: step default
    build = BuildTrainingSetOperator(task_id="b", data="synthetic:small")
    assert build.arguments() == {"data": "synthetic:small", "protocol": "temporal"}
    promote = PromoteOperator(task_id="p", version="3", fit="{{ ti.xcom_pull('t') }}")
    decide = ExperimentDecisionOperator(task_id="e")
    assert decide.arguments() == {} and decide.retries == 3  # talks to Redis and MLflow
    for op in (build, promote, DriftCheckOperator(task_id="d"), decide):
        assert op.step in steps.STEPS


def test_invalid_run_mode_names_the_task() -> None:
    with pytest.raises(InvalidInput, match="task x: run_mode 'spark'"):
        DriftCheckOperator(task_id="x", run_mode="spark")  # type: ignore[arg-type]


def test_short_circuit_callables() -> None:
    assert is_drifted({"drifted": True}) and not is_drifted({"drifted": False})
    assert not is_drifted(None)
    assert is_promoted({"promoted": True}) and not is_promoted({"promoted": False})


def test_flat_metrics_match_the_gate_metric() -> None:
    from rtrec.training.pipeline import flat_metrics
    from rtrec.training.registry import GATE_METRIC

    flat = flat_metrics(
        {"two_tower": {"ndcg@10": 0.2}, "EASE": {"ndcg@10": 0.1}},
        {"two_tower": {"ndcg@10": 0.25}, "current_champion": {"ndcg@10": 0.22}},
        {"two_tower": {"recall@20": 0.3}},
    )
    assert flat[GATE_METRIC] == 0.25 and flat["val_ndcg_at_10"] == 0.2
    assert flat["EASE.val_ndcg_at_10"] == 0.1
    assert flat["current_champion.gate_ndcg_at_10"] == 0.22
    assert flat["test_recall_at_20"] == 0.3


def test_unknown_step_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown step 'nope'"):
        steps.run_step("nope", {})
    assert steps.main(["only-one-arg"]) == 2


@pytest.fixture
def small_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline event log too small to judge: the check answers without Evidently."""
    from rtrec.streaming import write_events

    rng = np.random.default_rng(0)
    ts = np.sort(rng.integers(0, 9 * 86_400_000, 120)) + 1_700_000_000_000
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i % 7}" for i in range(120)],
            "item_id": [f"i{i % 11}" for i in range(120)],
            "event_type": ["view", "click"] * 60,
            "ts": ts,
            "value": 1.0,
        }
    )
    write_events(tmp_path / "offline" / "events", frame)
    monkeypatch.setenv("RTREC_WORK_DIR", str(tmp_path))
    # Written here, not by a stream processor: no watermark to wait for.
    monkeypatch.setenv("RTREC_MONITORING__OFFLINE_COVERAGE", "unchecked")
    return tmp_path


@pytest.mark.parametrize("mode", ["in_process", "command"])
def test_drift_check_runs_in_either_mode_and_pushes_xcoms(small_log: Path, mode: str) -> None:
    op = DriftCheckOperator(
        task_id="drift_check",
        scores=False,
        alert=False,
        run_mode=mode,  # type: ignore[arg-type]
        command=[sys.executable, "-m", "rtrec.dags.steps"],
    )
    ti = FakeTI()
    verdict = op.execute({"ti": ti})
    assert verdict["drifted"] is False
    assert "not judged" in verdict["reason"]
    assert ti.pushed["drifted"] is False and ti.pushed["reason"] == verdict["reason"]
    assert verdict["outcome"]["reference_rate"] == pytest.approx(1.0)  # one click per view


def test_command_failure_is_reported_with_its_output(small_log: Path) -> None:
    op = PromoteOperator(
        task_id="promote",
        version="1",
        fit={},
        run_mode="command",
        command=[sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"],
    )
    with pytest.raises(RuntimeError, match="exited 3 without a result: boom"):
        op.execute({})
