"""Serving under faults, over real HTTP: a real ``bentoml serve`` subprocess, the session's
real Redis (stopped and started again mid-traffic), a real MLflow registry (sqlite) whose
versions are corrupted, stripped of their artifacts or deleted under a live server.

What ``tests/integration/test_serving*.py`` already covers is not repeated here: Redis
down with no traffic, a truncated index refused during a swap, a dead tracking URI with
and without a last-good cache. Added here: the outage while requests are in flight, a
same-size bit flip, a champion whose artifacts or whose version are gone, a registry
that answers but has no champion, and a last-good cache that is itself corrupt.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
from rtrec.training import INDEX

from rtrec.config import Settings
from tests.conftest import free_port
from tests.serving_support import (
    UNREACHABLE,
    SteadyClient,
    flip_bytes,
    metric_value,
    recommend,
    register,
    wait_for,
)

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

MODEL = "serving-faults"
ERRORS = "rtrec_serving_lifecycle_errors_total"


@pytest.fixture(scope="module")
def settings(stack: Settings) -> Settings:
    from rtrec.features import apply

    apply(stack)  # register the feature repo once, before the servers read it
    out = stack.model_copy(deep=True)
    out.mlflow.model_name = MODEL
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two good bundles and a copy of the second with 16 bytes inverted mid-index."""
    from rtrec.serving.synthetic import synthetic_bundle

    root = tmp_path_factory.mktemp("fault-bundles")
    out = {
        f"s{seed}": synthetic_bundle(root / f"s{seed}", n_items=300, seed=seed) for seed in (1, 2)
    }
    flipped = root / "flipped"
    shutil.copytree(out["s2"], flipped)
    flip_bytes(flipped / INDEX)
    out["flipped"] = flipped
    return out


def env_for(**extra: str) -> dict[str, str]:
    return {
        "RTREC_MLFLOW__MODEL_NAME": MODEL,
        "RTREC_SERVING__WATCH_INTERVAL_S": "0.3",
        "RTREC_SERVING__API_KEYS": "[]",
        **extra,
    }


def status(url: str) -> dict:
    return httpx.get(f"{url}/status", timeout=5).json()


def test_redis_stopped_mid_traffic_degrades_flagged_and_recovers(
    settings: Settings, bundles: dict[str, Path]
) -> None:
    from rtrec.serving.process import running_server

    from rtrec.app.stack import start_redis, stop_managed

    env = env_for(RTREC_SERVING__BUNDLE_PATH=str(bundles["s1"]))
    log = settings.log_dir / "serving-faults-redis.log"
    with running_server(free_port(), env=env, log=log) as srv:
        client = SteadyClient(srv.url, rate=40)
        client.start()
        assert wait_for(lambda: len(client.results) >= 30)
        stopped_at = len(client.results)
        stop_managed(settings, "redis")
        try:
            assert wait_for(lambda: status(srv.url)["online_store_down"] is not None)
            assert wait_for(lambda: len(client.results) >= stopped_at + 60)
            with httpx.Client(base_url=srv.url, timeout=5) as c:
                during = recommend(c, "u3", k=10)
            assert during["fallback"] is True and len(during["items"]) == 10
            assert "feature store unavailable" in during["fallback_reason"]
            assert httpx.get(f"{srv.url}/readyz").status_code == 200  # degraded, still in
        finally:
            start_redis(settings)
        restarted_at = len(client.results)
        assert wait_for(lambda: client.results[-1][4] == "" and len(client.results) > restarted_at)
        time.sleep(1)
        client.finish()
        after = status(srv.url)
        metrics = httpx.get(f"{srv.url}/metrics").text

    codes = client.statuses()
    assert set(codes) == {200}, f"non-200 answers while Redis went away: {set(codes)}"
    outage = [r[4] for r in client.results[stopped_at:restarted_at]]
    assert any("feature store unavailable" in r for r in outage), set(outage)
    tail = [r[4] for r in client.results[-20:]]
    assert tail == [""] * 20, "not recovered once Redis answered again"
    assert after["online_store_down"] is None
    assert metric_value(
        metrics, "rtrec_serving_fallbacks_total", reason="feature store unavailable"
    )
    # The breaker opened on the outage and is closed again, as its metrics say.
    assert metric_value(metrics, "rtrec_serving_breaker_trips_total", dependency="online_store")
    assert "rtrec_serving_breaker_open{" in metrics
    assert not metric_value(metrics, "rtrec_serving_breaker_open", dependency="online_store")


def test_broken_missing_and_deleted_champions_never_fail_a_request(
    settings: Settings, bundles: dict[str, Path]
) -> None:
    from rtrec.serving.process import running_server
    from rtrec.training.registry import ModelRegistry

    registry = ModelRegistry(settings)
    v1 = register(registry, bundles["s1"])
    registry.promote(v1)
    log = settings.log_dir / "serving-faults-registry.log"
    with running_server(free_port(), env=env_for(), log=log) as srv:
        assert status(srv.url)["models"]["champion"]["version"] == v1
        client = SteadyClient(srv.url, rate=30)
        client.start()

        # 1. Bytes flipped inside the index: same size, refused by its checksum.
        flipped = register(registry, bundles["flipped"])
        registry.promote(flipped)
        assert wait_for(lambda: f"version {flipped} refused" in str(status(srv.url)["last_error"]))
        st = status(srv.url)
        assert INDEX in st["last_error"] and "checksum" in st["last_error"]
        assert st["models"]["champion"]["version"] == v1

        # 2. The alias points at a version whose artifacts were deleted from the store.
        stripped = register(registry, bundles["s2"])
        source = registry.client.get_model_version(MODEL, stripped).source  # models:/<id>
        location = registry.client.get_logged_model(source.split("/")[-1]).artifact_location
        shutil.rmtree(location.removeprefix("file://"))
        registry.promote(stripped)
        assert wait_for(lambda: f"version {stripped} refused" in str(status(srv.url)["last_error"]))
        assert status(srv.url)["models"]["champion"]["version"] == v1

        # 3. The champion's version is deleted: MLflow drops the alias with it.
        v4 = register(registry, bundles["s2"])
        registry.promote(v4)
        assert wait_for(lambda: status(srv.url)["models"]["champion"]["version"] == v4)
        registry.client.delete_model_version(MODEL, v4)
        assert wait_for(lambda: "no champion alias" in str(status(srv.url)["last_error"]))
        st = status(srv.url)
        assert st["ready"] and st["models"]["champion"]["version"] == v4  # still serving it

        # 4. A good promotion clears the flag.
        registry.promote(v1)
        assert wait_for(lambda: status(srv.url)["models"]["champion"]["version"] == v1)
        assert status(srv.url)["last_error"] is None
        time.sleep(0.5)
        client.finish()
        metrics = httpx.get(f"{srv.url}/metrics").text

    assert len(client.results) > 50 and set(client.statuses()) == {200}
    assert set(client.versions()) <= {v1, v4} and v4 in client.versions()
    # The champion never fell back: an online-store read cut at its deadline (CPU
    # starvation on this shared machine) is the only tolerated reason.
    reasons = {r[4] for r in client.results if r[4]}
    assert all(r.startswith("online store read exceeded") for r in reasons), reasons
    assert metric_value(metrics, ERRORS, kind="refused") >= 2
    assert metric_value(metrics, ERRORS, kind="champion_alias_missing") >= 1


def _last_good(work: Path, bundle: Path, version: str) -> None:
    """Leave a last-good copy in ``work`` exactly as a serving process would."""
    from rtrec.serving.lifecycle import ModelWatcher

    from rtrec.config import load_settings

    ModelWatcher(load_settings(work_dir=work), lambda *_: None).remember(bundle, version)


def test_registry_without_champion_starts_from_the_last_good_copy(
    settings: Settings, bundles: dict[str, Path], tmp_path: Path
) -> None:
    """The tracking URI answers but holds no model (a registry restored empty)."""
    from rtrec.serving.process import running_server

    work = tmp_path / "work"
    _last_good(work, bundles["s2"], "7")
    env = env_for(RTREC_WORK_DIR=str(work))
    with running_server(free_port(), env=env, log=tmp_path / "serve.log") as srv:
        st = status(srv.url)
        assert st["ready"] and st["models"]["champion"] == {
            "version": "7",
            "source": "last_good_cache",
            # single-stage: no ranker, no trees
            "ranker": {"state": "none", "version": None, "error": None, "trees": None},
        }
        assert "no champion alias" in st["last_error"] and MODEL in st["last_error"]
        out = httpx.post(f"{srv.url}/recommend", json={"user_id": "u1"}, timeout=10).json()
        assert out["fallback"] is False and out["model_version"] == "7"


def test_dead_registry_and_corrupt_cache_is_not_ready_and_says_why(
    settings: Settings, bundles: dict[str, Path], tmp_path: Path
) -> None:
    from rtrec.serving.process import running_server

    work = tmp_path / "work"
    _last_good(work, bundles["s1"], "3")
    cached_index = next((work / "serving").rglob(INDEX))
    flip_bytes(cached_index, at=0.9)
    env = env_for(**UNREACHABLE, RTREC_WORK_DIR=str(work))
    with running_server(free_port(), env=env, log=tmp_path / "serve.log", wait=False) as srv:

        def answers() -> bool:
            try:
                return httpx.get(f"{srv.url}/livez", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(answers, timeout=90), srv.log_text()[-1500:]
        assert httpx.get(f"{srv.url}/readyz").status_code == 503
        st = status(srv.url)
        assert st["ready"] is False and st["models"] == {}
        assert "unreachable" in st["last_error"]
        assert "cache refused" in st["last_error"] and INDEX in st["last_error"]
        for body in ({"user_id": "u1"}, {"user_id": "u1", "k": 0}):
            resp = httpx.post(f"{srv.url}/recommend", json=body, timeout=10)
            assert resp.status_code < 500, resp.text
        out = httpx.post(f"{srv.url}/recommend", json={"user_id": "u1"}, timeout=10).json()
        assert out["fallback"] is True and "no model loaded" in out["fallback_reason"]
        assert httpx.get(f"{srv.url}/similar/i1", timeout=10).status_code == 503
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert metric_value(metrics, ERRORS, kind="cache_refused") == 1
