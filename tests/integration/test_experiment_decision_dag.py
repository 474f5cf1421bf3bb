"""``rtrec_experiment_decision`` runs for real through the warm DAG runner against the
stack's Redis, broker and MLflow: a sample ratio mismatch alerts on the alerts topic and
changes nothing, then a challenger that wins is promoted and the serving check runs.

The arms' aggregates are written into Redis under the keys the stream processor's join
writes (``rtrec.streaming.experiment_keys``); the join itself is tested in
``test_experiments``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rtrec.config import Settings
from tests.integration.test_dags import _alerts, airflow_settings, run_dag  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def _write_arms(settings: Settings, experiment: str, arms: dict[str, tuple[int, int, int]]) -> None:
    """Each arm as (impressions, clicked impressions, exposed users)."""
    import orjson
    import redis
    from rtrec.streaming import arm_keys, experiment_keys

    client = redis.Redis.from_url(settings.redis.url)
    keys = experiment_keys(settings)
    for variant, (impressions, clicked, users) in arms.items():
        counters, exposed, clickers = arm_keys(keys["prefix"], experiment, variant)
        client.delete(counters, exposed, clickers)
        client.hset(
            counters,
            mapping={"impressions": impressions, "clicked_impressions": clicked, "click": clicked},
        )
        client.sadd(exposed, *[f"{variant}-u{i}" for i in range(users)])
        client.sadd(clickers, *[f"{variant}-u{i}" for i in range(min(users, clicked))])
        client.zadd(keys["arms"], {orjson.dumps([experiment, variant]): time.time()})


def _drop_arms(settings: Settings, experiment: str) -> None:
    """The stack's Redis is shared: later modules read the readout of their own arms."""
    import orjson
    import redis
    from rtrec.streaming import arm_keys, experiment_keys

    client = redis.Redis.from_url(settings.redis.url)
    keys = experiment_keys(settings)
    for variant in ("champion", "challenger"):
        client.delete(*arm_keys(keys["prefix"], experiment, variant))
        client.zrem(keys["arms"], orjson.dumps([experiment, variant]))


def test_decision_dag_alerts_on_srm_then_promotes_the_winner(
    airflow_settings: Settings,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rtrec.training.registry import ModelRegistry

    from rtrec.app.dag_runs import DagRunner

    settings = airflow_settings
    name = "decision-dag-test"
    monkeypatch.setenv("RTREC_MLFLOW__MODEL_NAME", name)
    monkeypatch.setenv("RTREC_SERVING__AB_CHALLENGER_SHARE", "0.5")
    settings.mlflow.model_name, settings.serving.ab_challenger_share = name, 0.5
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"format": 1}')
    registry = ModelRegistry(settings)
    _, v1 = registry.log_and_register(bundle, params={}, metrics={"gate_ndcg@10": 0.3})
    registry.promote(v1, reason="test: first champion")
    _, v2 = registry.log_and_register(bundle, params={}, metrics={"gate_ndcg@10": 0.3})
    experiment = f"{v1}-vs-{v2}"

    # 60/40 exposed users under a 50/50 split.
    _write_arms(
        settings, experiment, {"champion": (60_000, 6000, 3000), "challenger": (40_000, 4800, 2000)}
    )
    try:
        with DagRunner(settings) as runner:
            started = time.time()
            srm = run_dag(settings, "rtrec_experiment_decision", {}, runner=runner)
            _write_arms(
                settings,
                experiment,
                {"champion": (100_000, 10_000, 3000), "challenger": (100_000, 11_500, 3000)},
            )
            win = run_dag(settings, "rtrec_experiment_decision", {}, runner=runner)
    finally:
        _drop_arms(settings, experiment)

    assert srm["state"] == "success", srm["tasks"]
    decided = srm["tasks"]["experiment_decision"]["xcom"]
    assert (decided["verdict"], decided["decision"]) == ("sample ratio mismatch", "alerted")
    assert srm["tasks"]["tell_serving"]["state"] == "skipped"
    alerts = [a for a in _alerts(settings) if a["ts"] >= started * 1000 - 1000]
    assert [a["kind"] for a in alerts] == ["experiment_srm"]
    assert alerts[0]["experiment"] == experiment and alerts[0]["reason"] == decided["reason"]

    assert win["state"] == "success", win["tasks"]
    decided = win["tasks"]["experiment_decision"]["xcom"]
    assert (decided["verdict"], decided["decision"]) == ("challenger wins", "promoted")
    assert decided["challenger_version"] == v2 and f"challenger v{v2} wins" in decided["reason"]
    assert win["tasks"]["tell_serving"]["state"] == "success"  # no service: not a failure
    assert registry.champion_version() == v2 and registry.challenger_version() is None
