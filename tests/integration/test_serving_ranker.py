"""The two-stage service over real HTTP, with a real MLflow registry and the session's
Redis: a bundle carrying a ranker goes through the registry (its ``ranker/`` folder
included) and ranks answers; a champion whose ranker is broken is still served, in
retrieval order, and that is flagged in the answer, ``/status`` and ``/metrics``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from rtrec.config import Settings
from tests.conftest import free_port
from tests.serving_support import (
    flip_bytes,
    metric_value,
    recommend,
    register,
    wait_for,
    write_history,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "serving-ranker"
USER = "ranked-user"
HISTORY = [f"i{j}" for j in range(0, 90, 3)]


@pytest.fixture(scope="module")
def settings(stack: Settings) -> Settings:
    from rtrec.features import apply

    apply(stack)
    out = stack.model_copy(deep=True)
    out.mlflow.model_name = MODEL
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bundle with a (synthetic) ranker, and a copy whose ranker tables are damaged."""
    from rtrec.serving.synthetic import synthetic_bundle
    from rtrec.training import add_synthetic_ranker

    root = tmp_path_factory.mktemp("bundles")
    ranked = synthetic_bundle(root / "ranked", n_items=300, n_users=30, seed=5)
    add_synthetic_ranker(ranked, neighbours=20, trees=30, leaves=15, seed=2)
    broken = root / "broken"
    shutil.copytree(ranked, broken)
    flip_bytes(broken / "ranker" / "tables.npz")
    return {"ranked": ranked, "broken": broken}


def test_ranked_answers_then_retrieval_order_flagged_when_the_ranker_is_broken(
    settings: Settings, bundles: dict[str, Path]
) -> None:
    from rtrec.serving.process import running_server
    from rtrec.training.registry import ModelRegistry

    registry = ModelRegistry(settings)
    good = register(registry, bundles["ranked"])
    registry.promote(good)
    write_history(settings, USER, HISTORY)
    env = {
        "RTREC_MLFLOW__MODEL_NAME": MODEL,
        "RTREC_SERVING__WATCH_INTERVAL_S": "0.3",
        "RTREC_SERVING__API_KEYS": "[]",
    }
    log = settings.log_dir / "serving-ranker.log"
    with (
        running_server(free_port(), env=env, log=log) as srv,
        httpx.Client(base_url=srv.url, timeout=10) as c,
    ):
        champion = c.get("/status").json()["models"]["champion"]
        assert champion["version"] == good and champion["ranker"]["state"] == "loaded"
        out = recommend(c, USER, k=15)
        assert out["fallback"] is False and len(out["items"]) == 15
        scores = [i["score"] for i in out["items"]]
        assert scores == sorted(scores, reverse=True)
        assert not {i["item_id"] for i in out["items"]} & set(HISTORY)

        bad = register(registry, bundles["broken"])
        registry.promote(bad)
        assert wait_for(lambda: c.get("/status").json()["models"]["champion"]["version"] == bad)
        status = c.get("/status").json()
        ranker = status["models"]["champion"]["ranker"]
        assert ranker["state"] == "unavailable" and "checksum" in ranker["error"]
        flagged = recommend(c, USER, k=15)
        assert flagged["model_version"] == bad and len(flagged["items"]) == 15
        assert flagged["fallback"] is True
        assert flagged["fallback_reason"].startswith("ranker unavailable: ")
        assert flagged["fallback_reason"].endswith("(served retrieval order)")
        counts = c.get("/status").json()["degradations"]["counts"]
        assert counts.get("ranker unavailable", 0) >= 1
        assert wait_for(
            lambda: (
                metric_value(
                    c.get("/metrics").text,
                    "rtrec_serving_fallbacks_total",
                    reason="ranker unavailable",
                )
                >= 1
            )
        )
    text = log.read_text()
    assert "WARNING" in text and "ranker" in text and "unavailable" in text
