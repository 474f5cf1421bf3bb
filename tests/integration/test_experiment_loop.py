"""The online experiment loop end to end, every part real: a model trained by the pipeline
is A/B-tested against an untrained champion on a BentoML service; simulated users
(``rtrec.serving.simulator``) click what the synthetic data's ground truth says they like;
the stream processor joins their clicks to the service's impressions on the broker; the
readout decides; ``rtrec_experiment_decision`` runs through Airflow and promotes the
challenger; the service hot-swaps to it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from rtrec.config import Settings
from tests.integration.test_dags import airflow_settings, run_dag  # noqa: F401
from tests.stream_helpers import env, isolated, processor_log, start_processor

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

KEY = "loop-key"


@pytest.fixture
def s(
    stack: Settings,
    airflow_settings: Settings,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """Own topics, Redis DB, work dir (so its own MLflow registry) and the migrated
    Airflow home, exported for the service, the processor and the DAG runner. The
    untrained champion is clicked rarely (a few per cent of answers), and the sample
    size for a 10 % lift over so low a rate is tens of thousands of answers per arm: the
    test sizes for a 50 % lift, which the trained model clears by far."""
    from rtrec.app import stack as stack_mod

    out = isolated(stack, tmp_path)
    out.kafka.impressions_topic = f"imp-{uuid.uuid4().hex[:6]}"
    out.airflow.home = airflow_settings.airflow.home
    out.serving.ab_challenger_share = 0.5
    out.monitoring.min_detectable_effect = 0.5
    stack_mod.ensure_topics(out)
    variables = {
        **env(out),
        "RTREC_KAFKA__IMPRESSIONS_TOPIC": out.kafka.impressions_topic,
        "RTREC_AIRFLOW__HOME": str(out.airflow.home),
        "RTREC_SERVING__AB_CHALLENGER_SHARE": "0.5",
        "RTREC_MONITORING__MIN_DETECTABLE_EFFECT": "0.5",
        "RTREC_SERVING__WATCH_INTERVAL_S": "0.5",
        "RTREC_SERVING__API_KEYS": f'["{KEY}"]',
        "RTREC_SERVING__RATE_LIMIT_PER_S": "1000000",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return out


def test_simulated_users_make_the_decision_dag_promote_the_better_model(
    s: Settings, tmp_path: Path
) -> None:
    from rtrec.features import apply
    from rtrec.serving.process import running_server
    from rtrec.serving.simulator import run_until_decided
    from rtrec.serving.synthetic import synthetic_bundle
    from rtrec.training import ModelRegistry, train

    from bench._common import free_port, seed_histories
    from rtrec.app.dag_runs import DagRunner
    from rtrec.data import load_dataset
    from rtrec.data.ground_truth import ground_truth
    from rtrec.data.synthetic_config import SyntheticConfig

    apply(s)
    ds = load_dataset("synthetic:small")
    trained = train(s, data=ds.save(tmp_path / "data"), epochs=2, progress=False).version
    registry = ModelRegistry(s)
    assert registry.champion_version() == trained  # the first model is promoted
    # The champion: an untrained two-tower over the same catalog and users.
    untrained = synthetic_bundle(tmp_path / "untrained", n_items=1000, n_users=2000, seed=3)
    _, champion = registry.log_and_register(untrained, params={}, metrics={})
    registry.promote(champion, reason="test: an untrained champion")
    registry.start_experiment(trained, reason="test: the trained model challenges it")
    experiment = f"{champion}-vs-{trained}"

    histories = ds.events.sort_values("ts").groupby("user_id")["item_id"]
    seed_histories(s, {str(u): list(map(str, h.tail(20))) for u, h in histories})
    processor = start_processor(s, {})
    try:
        with running_server(free_port(), log=tmp_path / "serving.log", timeout=300) as srv:
            decided = run_until_decided(
                s,
                ground_truth(SyntheticConfig.small()),
                base_url=srv.url,
                experiment=experiment,
                api_key=KEY,
                users=[str(u) for u in ds.events["user_id"].unique()],
                threads=3,
                max_answers=40_000,
            )
            with DagRunner(s) as runner:
                run = run_dag(s, "rtrec_experiment_decision", {}, runner=runner)
            swapped = _serves(srv.url, trained)
    finally:
        processor.terminate()
        processor.wait(30)
    arms = decided.readout["variants"]
    assert decided.verdict == "challenger wins", (decided, processor_log(s))
    assert (
        arms["challenger"]["ctr_per_impression"]["rate"]
        > arms["champion"]["ctr_per_impression"]["rate"]
    )
    assert sum(a["impressions"] for a in arms.values()) == decided.sent["answers"]
    assert run["state"] == "success", run["tasks"]
    decision = run["tasks"]["experiment_decision"]["xcom"]
    assert (decision["experiment"], decision["decision"]) == (experiment, "promoted")
    assert registry.champion_version() == trained and registry.challenger_version() is None
    assert swapped, "the service did not hot-swap to the promoted challenger"


def _serves(url: str, version: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        models = httpx.get(f"{url}/status", headers={"X-API-Key": KEY}).json()["models"]
        if models.get("champion", {}).get("version") == version and "challenger" not in models:
            return True
        time.sleep(0.5)
    return False
