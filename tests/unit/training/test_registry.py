"""The registry and its promotion gate against a real sqlite-backed MLflow in tmp_path.

Bundles here are small directories of files: the registry moves them as one artifact and
never opens them, so these tests do not depend on the model code.
"""

from __future__ import annotations

import filecmp
from collections.abc import Callable
from pathlib import Path

import pytest

from rtrec.config import Settings, load_settings
from rtrec.errors import InvalidInput, NotFound
from training.registry import (
    CHALLENGER,
    CHAMPION,
    GATE_METRIC,
    TAG_DECISION,
    TAG_PREVIOUS,
    TAG_REASON,
    ModelRegistry,
    metric_key,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sqlite registry for the module (schema migration costs seconds); a model per test."""
    return tmp_path_factory.mktemp("mlflow-work")


@pytest.fixture
def registry(work_dir: Path, request: pytest.FixtureRequest) -> ModelRegistry:
    settings: Settings = load_settings(work_dir=work_dir)
    settings.mlflow.model_name = f"m-{request.node.name}"[:60]
    return ModelRegistry(settings)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    (root / "index").mkdir(parents=True)
    (root / "weights.bin").write_bytes(bytes(range(256)) * 10)
    (root / "index" / "items.faiss").write_bytes(b"faiss")
    (root / "manifest.json").write_text('{"format": 1}')
    return root


@pytest.fixture
def register(registry: ModelRegistry, bundle: Path) -> Callable[[float], str]:
    def _register(ndcg: float) -> str:
        _, version = registry.log_and_register(
            bundle, params={"epochs": 1}, metrics={"val_ndcg@10": ndcg, "val_recall@10": ndcg / 2}
        )
        return version

    return _register


def test_registered_version_is_challenger_with_metrics_and_report(
    registry: ModelRegistry, bundle: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.md"
    report.write_text("| model | ndcg@10 |\n|---|---|\n| two-tower | 0.3 |\n")
    run_id, version = registry.log_and_register(
        bundle,
        params={"epochs": 3, "protocol": "temporal"},
        metrics={"val_ndcg@10": 0.3, "test_recall@20": 0.4},
        report_files=[report],
    )
    assert registry.challenger_version() == version and registry.champion_version() is None
    run = registry.client.get_run(run_id)
    assert run.data.metrics == {"val_ndcg_at_10": 0.3, "test_recall_at_20": 0.4}
    assert run.data.params["protocol"] == "temporal"
    listed = [a.path for a in registry.client.list_artifacts(run_id, "report")]
    assert listed == ["report/report.md"]
    [info] = registry.versions()
    assert info.aliases == [CHALLENGER] and info.metrics[GATE_METRIC] == 0.3


def test_first_version_becomes_champion_and_downloads_intact(
    registry: ModelRegistry, register: Callable[[float], str], bundle: Path, tmp_path: Path
) -> None:
    version = register(0.2)
    decision = registry.promote_if_better(version)
    assert decision.promoted and "no champion" in decision.reason
    assert registry.champion_version() == version and registry.challenger_version() is None
    local = registry.download_bundle(CHAMPION, dst=tmp_path / "fetched")
    cmp = filecmp.dircmp(bundle, local)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    assert filecmp.cmp(bundle / "index" / "items.faiss", local / "index" / "items.faiss")
    assert registry.download_bundle(version, dst=tmp_path / "fetched") == local  # cached


def test_better_model_becomes_champion_and_worse_stays_challenger(
    registry: ModelRegistry, register: Callable[[float], str]
) -> None:
    v1 = register(0.30)
    registry.promote_if_better(v1)
    v2 = register(0.25)
    worse = registry.promote_if_better(v2)
    assert not worse.promoted
    assert registry.champion_version() == v1 and registry.challenger_version() == v2
    tags = registry.versions()[0].tags
    assert tags[TAG_DECISION] == "kept_challenger"
    assert (
        "0.2500 vs champion v1 0.3000" in tags[TAG_REASON] and "does not beat" in tags[TAG_REASON]
    )
    v3 = register(0.33)
    better = registry.promote_if_better(v3)
    assert better.promoted and better.champion_version == v1 and better.champion_value == 0.30
    assert registry.champion_version() == v3
    info = {i.version: i for i in registry.versions()}
    assert info[v3].tags[TAG_DECISION] == "promoted" and info[v3].tags[TAG_PREVIOUS] == v1
    assert info[v3].aliases == [CHAMPION] and info[v2].aliases == []


def test_margin_is_relative_and_ties_do_not_promote(
    registry: ModelRegistry, register: Callable[[float], str]
) -> None:
    champion = register(0.40)
    registry.promote_if_better(champion)
    tie = register(0.40)
    assert not registry.promote_if_better(tie).promoted
    slightly = register(0.41)  # +2.5 %
    assert not registry.promote_if_better(slightly, margin=0.05).promoted
    assert registry.promote_if_better(slightly, margin=0.02).promoted
    assert registry.champion_version() == slightly


def test_rollback_walks_back_the_champion_chain(
    registry: ModelRegistry, register: Callable[[float], str]
) -> None:
    with pytest.raises(NotFound, match="no champion"):
        registry.rollback()
    v1, v2 = register(0.1), register(0.2)
    registry.promote_if_better(v1)
    with pytest.raises(NotFound, match="no previous champion"):
        registry.rollback()
    registry.promote_if_better(v2)
    v3 = register(0.15)
    registry.promote(v3, reason="hotfix by hand")
    assert registry.champion_version() == v3
    assert registry.rollback(reason="bad canary") == v2
    assert registry.rollback() == v1
    info = {i.version: i for i in registry.versions()}
    assert info[v3].tags["rollback.demoted_to"] == v2
    assert info[v3].tags["rollback.reason"] == "bad canary"
    assert info[v2].tags["rollback.restored_from"] == v3
    assert info[v3].tags[TAG_REASON] == "hotfix by hand"


def test_unknown_versions_aliases_and_metrics_fail_by_name(
    registry: ModelRegistry, register: Callable[[float], str], tmp_path: Path
) -> None:
    version = register(0.1)
    with pytest.raises(NotFound, match="no version 99"):
        registry.promote(99)
    with pytest.raises(NotFound, match="alias 'champion'"):
        registry.download_bundle(CHAMPION)
    with pytest.raises(InvalidInput, match="val_map_at_10"):
        registry.promote_if_better(version, metric="val_map_at_10")
    with pytest.raises(NotFound, match="bundle directory"):
        registry.log_and_register(tmp_path / "missing", params={}, metrics={})
    assert metric_key("ndcg@10") == "ndcg_at_10"
