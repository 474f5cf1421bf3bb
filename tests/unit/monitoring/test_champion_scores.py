"""The champion for score drift: none is not an error; a broken one is a reported degradation.

Registries are real MLflow (a fresh sqlite one, an HTTP one nobody serves); only the
corrupt-bundle case replaces the download with a directory of garbage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY
from rtrec.monitoring import monitor_offline_log
from rtrec.monitoring.scores import champion_bundle
from rtrec.training import WEIGHTS

from rtrec.config import Settings, load_settings
from tests.conftest import free_port

DAY = 86_400_000
METRIC = "rtrec_monitor_score_drift_skipped_total"


def skipped(reason: str) -> float:
    return REGISTRY.get_sample_value(METRIC, {"reason": reason}) or 0.0


@pytest.fixture
def dead_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    return load_settings(work_dir=tmp_path, mlflow={"tracking_uri": uri})


def test_no_registered_model_is_no_champion_not_a_failure(tmp_path: Path) -> None:
    before = skipped("registry_unavailable") + skipped("champion_unusable")
    assert champion_bundle(load_settings(work_dir=tmp_path)) == (None, None)
    assert skipped("registry_unavailable") + skipped("champion_unusable") == before


def test_unreachable_registry_is_logged_counted_and_explained(
    dead_registry: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    before = skipped("registry_unavailable")
    with caplog.at_level(logging.WARNING, logger="rtrec.monitoring.scores"):
        bundle, reason = champion_bundle(dead_registry)
    assert bundle is None
    assert reason is not None and reason.startswith("model registry unavailable: Unavailable")
    assert str(dead_registry.mlflow.tracking_uri) in reason
    assert skipped("registry_unavailable") == before + 1
    assert any(
        r.levelno == logging.WARNING and "score drift not judged" in r.getMessage()
        for r in caplog.records
    )


def test_corrupt_champion_bundle_is_a_degradation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rtrec.training.registry as registry

    broken = tmp_path / "bundle"
    broken.mkdir()
    (broken / WEIGHTS).write_bytes(b"not a model")
    monkeypatch.setattr(registry.ModelRegistry, "champion_version", lambda self: "3")
    monkeypatch.setattr(registry.ModelRegistry, "download_bundle", lambda self, version: broken)
    before = skipped("champion_unusable")
    bundle, reason = champion_bundle(load_settings(work_dir=tmp_path))
    assert bundle is None and reason is not None
    assert reason.startswith("champion version 3 unusable: ")
    assert skipped("champion_unusable") == before + 1


def test_monitor_result_says_score_drift_was_not_judged(dead_registry: Settings) -> None:
    rng = np.random.default_rng(0)
    n = 2_000
    events = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, 100, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 50, n)],
            "event_type": rng.choice(["view", "click"], n, p=[0.8, 0.2]),
            "ts": np.sort(rng.integers(0, 8 * DAY, n)),
        }
    )
    verdict = monitor_offline_log(
        dead_registry, events=events, now_ms=8 * DAY, alert=False, record=False
    )
    assert "score drift not judged: model registry unavailable" in verdict.reason
    assert "score drift not judged" in verdict.to_dict()["reason"]  # what the DAG run shows
    assert not any(c.column.startswith("score_") for c in verdict.columns)
