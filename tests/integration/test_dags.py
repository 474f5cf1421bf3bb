"""The DAGs run for real: ``dag.test()`` against the embedded stack and a fresh Airflow DB.

Each ``dag.test()`` runs through :mod:`rtrec.app.dag_runs` in a subprocess whose Airflow
environment (home, DAG folder) is set before Airflow is imported, so the pytest process's
own imports stay untouched. A trigger only queues the triggered run; ``queued=True`` then
executes that very run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rtrec.app import embedded_airflow as embedded
from rtrec.config import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

DAY = 86_400_000


@pytest.fixture(scope="module")
def airflow_settings(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """The stack's settings with a fresh Airflow home whose DB is migrated (the variable
    is exported for the DAG runs' subprocesses and restored afterwards)."""
    settings = load_settings()
    settings.airflow.home = tmp_path_factory.mktemp("airflow-home")
    old = os.environ.get("RTREC_AIRFLOW__HOME")
    os.environ["RTREC_AIRFLOW__HOME"] = str(settings.airflow.home)
    try:
        embedded.airflow_cli(settings, "db", "migrate")
        yield settings
    finally:
        if old is None:
            os.environ.pop("RTREC_AIRFLOW__HOME", None)
        else:
            os.environ["RTREC_AIRFLOW__HOME"] = old


def run_dag(settings: Settings, dag_id: str, conf: dict, *, runner=None, **kw) -> dict:
    """One run through :func:`rtrec.app.dag_runs.run_dag` (or ``runner``, a warm
    :class:`rtrec.app.dag_runs.DagRunner`), as a plain dict for the assertions."""
    from rtrec.app.dag_runs import run_dag as run

    if runner is not None:
        out = runner.run(dag_id, conf, timeout_s=800, **kw)
    else:
        out = run(settings, dag_id, conf, timeout_s=800, **kw)
    return {
        "run_id": out.run_id,
        "state": out.state,
        "tasks": out.tasks,
        "queued": out.queued,
        "conf": out.conf,
        "replaced": out.replaced,
    }


def _write_offline_log(settings: Settings, events, items, users) -> None:
    """The stream processor's offline log and catalog, as if the events had streamed."""
    from rtrec.features import write_offline_metadata
    from rtrec.streaming import write_events

    out = settings.offline_dir / "events"
    for f in out.glob("*.parquet"):
        f.unlink()
    if "value" not in events:
        events = events.assign(value=1.0)
    write_events(out, events, partition=0)
    write_offline_metadata(settings, items, users)


@pytest.fixture(scope="module")
def shifted():
    from rtrec.data import ShiftConfig, SyntheticConfig, generate

    cfg = SyntheticConfig.small(n_users=1_000, n_items=500, n_events=60_000, days=21)
    return generate(cfg.model_copy(update={"shift": ShiftConfig(at_fraction=0.7)}))


def _alerts(settings: Settings) -> list[dict]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.kafka.alerts_topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    try:
        return [json.loads(m.value) for m in consumer]
    finally:
        consumer.close()


def test_drift_monitor_stationary_then_shift_alerts_and_triggers_training(
    airflow_settings: Settings, shifted, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtrec.app.dag_runs import DagRunner
    from rtrec.errors import Unavailable

    settings = airflow_settings
    _write_offline_log(settings, shifted.events, shifted.items, shifted.users)
    shift = int(shifted.meta["shift_ts"])
    conf = {"scores": False, "window_days": 1.0, "reference_days": 7.0}
    # The log above was written here, not streamed: the check has no watermark to wait for.
    monkeypatch.setenv("RTREC_MONITORING__OFFLINE_COVERAGE", "unchecked")

    # Both monitor runs in one warm runner, as `rtrec demo` runs its DAGs.
    with DagRunner(settings) as runner:
        calm = run_dag(
            settings, "rtrec_drift_monitor", {**conf, "now_ms": shift - DAY}, runner=runner
        )
        pid = runner.pid
        # A request the runner cannot carry out is an error for that run, not its end.
        with pytest.raises(Unavailable, match="no queued run"):
            runner.run("rtrec_training", {}, queued="no-such-run")
        started = time.time()
        hot = run_dag(
            settings, "rtrec_drift_monitor", {**conf, "now_ms": shift + DAY}, runner=runner
        )
        assert pid is not None and runner.pid == pid
    assert runner.pid is None
    log = Path(settings.work_dir) / "logs" / "dag-rtrec_drift_monitor.log"
    assert log.stat().st_size > 0  # each run's task output lands in its DAG's log

    verdict = calm["tasks"]["drift_check"]["xcom"]
    assert calm["state"] == "success"
    assert verdict["drifted"] is False, verdict["reason"]
    assert calm["tasks"]["trigger_training"]["state"] == "skipped"
    assert calm["queued"] == {}

    verdict = hot["tasks"]["drift_check"]["xcom"]
    assert verdict["drifted"] is True, verdict["reason"]
    assert hot["tasks"]["trigger_training"]["state"] == "success"
    (queued,) = hot["queued"]["rtrec_training"]
    assert queued["conf"]["reason"].startswith("drift: ")
    assert verdict["reason"] in queued["conf"]["reason"]

    alerts = [a for a in _alerts(settings) if a["ts"] >= started * 1000 - 1000]
    assert [a["kind"] for a in alerts] == ["drift"]
    assert alerts[0]["verdict"]["drifted"] is True

    from rtrec.monitoring import panel_titles
    from rtrec.monitoring.dashboards import PANEL_TITLES

    assert panel_titles(settings) == list(PANEL_TITLES)
    snapshots = list(Path(str(settings.monitoring.workspace)).rglob("snapshots/*.json"))
    assert len(snapshots) == 2  # one per monitor run


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from rtrec.data import SyntheticConfig, generate

    cfg = SyntheticConfig.small(n_users=500, n_items=250, n_events=20_000, days=14)
    yield generate(cfg).save(tmp_path_factory.mktemp("dag-data") / "synthetic")


def test_training_dag_registers_and_promotes(
    airflow_settings: Settings, small_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    from rtrec.training.artifacts import load_bundle
    from rtrec.training.index import measure_recall
    from rtrec.training.registry import ModelRegistry

    # An IVF index even on this small catalog, so the recall the run measures is a real
    # measurement that could fall short (an exact index is 1.0 by construction).
    monkeypatch.setenv("RTREC_TRAINING__INDEX_EXACT_MAX_ITEMS", "100")
    # Queued the way a trigger queues it (the drift monitor's TriggerDagRunOperator, the
    # UI, the REST API: a logical date and Airflow's own run id); run_dag(queued=...) then
    # executes that very run under its id.
    conf = {"data": str(small_data), "epochs": 2, "reason": "test: drift share 0.67"}
    embedded.airflow_cli(airflow_settings, "dags", "reserialize")
    triggered = embedded.airflow_cli(
        airflow_settings,
        "dags",
        "trigger",
        "rtrec_training",
        "-l",
        datetime.now(UTC).isoformat(),
        "-c",
        json.dumps(conf),
        "-o",
        "json",
    )
    queued_id = json.loads(triggered.strip().splitlines()[-1])[0]["dag_run_id"]  # after warnings
    out = run_dag(airflow_settings, "rtrec_training", {}, queued=queued_id)
    assert out["conf"] == conf
    assert out["run_id"] == queued_id and out["replaced"] is None
    queued_ids = [r["run_id"] for r in out["queued"].get("rtrec_training", [])]
    assert queued_id not in queued_ids  # that queued run is the one that ran
    tasks = out["tasks"]
    assert out["state"] == "success", tasks
    assert "build_index" not in tasks  # the served index is built, and measured, in training
    counts = tasks["build_training_set"]["xcom"]["counts"]
    assert counts["train"] > 10_000 and counts["gate"] > 1_000
    version = tasks["evaluate_and_register"]["xcom"]["version"]
    fit = tasks["train_two_tower"]["xcom"]
    # A quality floor: on the gate slice the served model beats MostPopular by a margin.
    heldout = fit["heldout_metrics"]
    assert fit["heldout_split"] == "gate"
    assert heldout["two_tower"]["ndcg@10"] > 1.2 * heldout["MostPopular"]["ndcg@10"]
    # The recall reported is that of the index the bundle carries, on gate users' queries.
    index = fit["index"]
    assert index["kind"] == "ivf" and "gate-slice users" in index["source"]
    assert index["recall@100"] >= airflow_settings.training.min_index_recall
    bundle = load_bundle(fit["bundle_dir"], use_gpu=False)
    assert bundle.index.kind == "ivf" and bundle.index.measured == {
        k: v for k, v in index.items() if k not in ("kind", "nprobe")
    }
    # ... and the measurement can fail: the same index probing one list misses items.
    import faiss

    faiss.extract_index_ivf(bundle.index.index).nprobe = 1
    rng = np.random.default_rng(0)
    queries = bundle.item_keys[rng.choice(len(bundle.item_keys), 50, replace=False)]
    assert measure_recall(bundle.index, bundle.item_keys, queries)["recall@100"] < 1.0
    decision = tasks["promote"]["xcom"]
    assert decision["promoted"] is True  # the first model has no champion to beat
    assert decision["evidence"]["slice"]["rows"] == counts["gate"]
    assert tasks["tell_serving"]["state"] == "success"  # no service running: not a failure
    assert tasks["tell_serving"]["xcom"]["notified"] is False

    registry = ModelRegistry(airflow_settings)
    assert registry.champion_version() == version


def test_feature_backfill_fills_the_online_store(airflow_settings: Settings, shifted) -> None:
    """Redis loses the online features; the backfill DAG rebuilds them from the log."""
    import redis

    settings = airflow_settings
    _write_offline_log(settings, shifted.events, shifted.items, shifted.users)
    store = redis.Redis.from_url(settings.redis.url)
    store.flushdb()
    end = int(shifted.events["ts"].max()) + 1
    try:
        out = run_dag(settings, "rtrec_feature_backfill", {"end_ms": end, "days": 7.0})
        _check_backfill(settings, shifted, out, end)
    finally:
        # The backfill writes into the shared stack's Redis, trending set included: the
        # modules after this one (serving's cold-user fallback) must not read its items.
        store.flushdb()


def _check_backfill(settings: Settings, shifted, out: dict, end: int) -> None:
    from rtrec.features import online_features

    result = out["tasks"]["materialize_features"]["xcom"]
    assert out["state"] == "success", out
    week = shifted.events[shifted.events["ts"] >= end - 7 * DAY]
    assert result["users"] == week["user_id"].nunique()
    assert result["events"] == len(week)

    user = week["user_id"].value_counts().index[0]
    mine = week[week["user_id"] == user].sort_values("ts")
    (row,) = online_features(settings, [user])
    clicks_7d = int((mine["event_type"] == "click").sum())
    assert row["cnt_click_7d"] == clicks_7d
    assert row["recent_items"][0] == str(mine["item_id"].iloc[-1])
    assert row["last_event_ms"] == int(mine["ts"].iloc[-1])
