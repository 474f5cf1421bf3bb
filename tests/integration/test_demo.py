"""`rtrec demo --quick` end to end, as a newcomer runs it, leaving nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtrec.app import stack as stack_mod
from rtrec.config import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_quick_runs_the_loop_and_stops_everything(tmp_path: Path) -> None:
    from tests.conftest import free_port

    env = {
        **os.environ,
        "RTREC_WORK_DIR": str(tmp_path / "w"),
        "RTREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "RTREC_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0",
        "RTREC_SERVING__PORT": str(free_port()),
    }
    exe = Path(sys.executable).with_name("rtrec")
    try:
        proc = subprocess.run(
            [str(exe), "demo", "--quick"], env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        # A demo killed at the timeout cannot stop what it started: its broker, Redis and
        # stream processor would load the machine for every later test.
        left = stack_mod.down(load_settings(work_dir=tmp_path / "w"))
    assert left == [], f"the demo left managed processes running: {left}"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["replay through Kafka into the feature store"]["published"] > 10_000
    first = steps["Airflow rtrec_training: Spark set, two-tower, MLflow, FAISS, gate"]
    assert first["version"] == "1" and first["promoted"] is True
    # The two-stage system is served: the champion's ranker is loaded, and only the
    # burst's two new users (of about 2,000) get a fallback answer.
    served = steps["BentoML service up (champion from MLflow)"]
    assert served["ranker"] == "loaded" and served["ranker_version"], served
    assert first["two_stage_ndcg@10"] > 0 and first["two_tower_ndcg@10"] > 0
    # The demo trains on the stream's offline log: every ranker fit retrieved its states
    # through Feast at its validation cut, found them equal to the event log's there (the
    # replay puts days of events in one batch: the processor keeps each user's state at
    # every hour it crosses) and used them, saying so in its fit and in the bundle's
    # declaration.
    floor = load_settings(work_dir=tmp_path / "w").training.ranker_states_min_agreement
    runs = sorted((tmp_path / "w").glob("training/runs/*/bundle/ranker/ranker.json"))
    fits = [json.loads(p.read_text())["fit"]["ranker_states"] for p in runs]
    assert len(fits) >= 2 and all(f["feast_rows"] > 100 for f in fits), fits
    for f, run in zip(fits, runs, strict=True):
        assert f["agreement"]["equal_to_event_log"] >= floor, f
        assert f["source"] == "feast_historical", f
        declared = json.loads((run.parents[1] / "metadata.json").read_text())["ranker"]
        assert declared["training_states"] == f["source"]
    burst = steps["burst of HTTP recommendations with feedback"]
    assert burst["statuses"] == {"200": burst["requests"]} and burst["clicks_posted"] > 0
    assert burst["fallbacks"] < 0.05 * burst["requests"], burst
    assert summary["missed"] == []
    # --quick skips the A/B phase (it promotes on the offline gate), saying so.
    ab = [s for s in summary["steps"] if s["step"].startswith(("A/B test", "Airflow rtrec_exp"))]
    assert [s["status"] for s in ab] == ["skipped", "skipped"], ab
    assert "--quick" in ab[0]["reason"] and summary["experiment"] is None
    rest = [s for s in summary["steps"] if s not in ab]
    assert all(s["status"] in ("done", "not promoted") for s in rest), summary
    drift = steps["Airflow rtrec_drift_monitor (Evidently): alert, trigger"]
    assert drift["status"] == "done" and drift["verdict"] == "drifted"
    assert drift["drifted"] is True and drift["retraining_triggered"] is True
    # Both windows judged whole: exactly the events the demo published for each.
    assert drift["reference_rows"] == drift["published_reference_rows"] > 200
    assert drift["current_rows"] == drift["published_current_rows"] > 200
    assert drift["offline_log"] == "wait"
    assert summary["drift_windows"]["judged"] == summary["drift_windows"]["published"]
    retrain = steps["Airflow rtrec_training (triggered by the drift)"]
    assert retrain["version"] == "2" and retrain["trigger"].startswith("drift: ")
    # The gate judged the two-stage systems as served, the champion's through its bundle.
    assert retrain["gate_systems"] == "two_stage vs two_stage", retrain
    swap = steps["hot swap of the new champion"]
    if retrain["promoted"]:
        assert swap["status"] == "done" and swap["serving_version"] == "2"
    else:  # the gate refused the challenger: an outcome, shown with the gate's reason
        assert swap["status"] == "not promoted" and swap["reason"] and swap["seconds"] is None
    report = Path(summary["report"])
    assert report.exists() and "data:image/png;base64" in report.read_text()
    assert "Two-stage before shift (gate slice)" in report.read_text()
