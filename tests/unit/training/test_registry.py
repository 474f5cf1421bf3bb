"""The registry and its promotion gate against a real sqlite-backed MLflow in tmp_path.

Bundles here are small directories of files: the registry moves them as one artifact and
never opens them, so these tests do not depend on the model code.
"""

from __future__ import annotations

import filecmp
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rtrec.training.gate import GateEvidence, GateRule, SliceInfo, UserScores, gather_evidence
from rtrec.training.registry import (
    CHALLENGER,
    CHAMPION,
    GATE_METRIC,
    TAG_DECISION,
    TAG_PREVIOUS,
    TAG_REASON,
    ModelRegistry,
    metric_key,
)

from rtrec.config import Settings, load_settings
from rtrec.errors import InvalidInput, NotFound

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
            bundle, params={"epochs": 1}, metrics={"gate_ndcg@10": ndcg, "val_ndcg@10": ndcg}
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
        metrics={"gate_ndcg@10": 0.3, "test_recall@20": 0.4},
        report_files=[report],
    )
    assert registry.challenger_version() == version and registry.champion_version() is None
    run = registry.client.get_run(run_id)
    assert run.data.metrics == {"gate_ndcg_at_10": 0.3, "test_recall_at_20": 0.4}
    assert run.data.params["protocol"] == "temporal"
    listed = [a.path for a in registry.client.list_artifacts(run_id, "report")]
    assert listed == ["report/report.md"]
    [info] = registry.versions()
    assert info.aliases == [CHALLENGER] and info.metrics[GATE_METRIC] == 0.3


SLICE = SliceInfo(
    "gate", rows=5000, users=800, start_ms=1_750_000_000_000, end_ms=1_750_086_400_000
)


def evidence(
    champion: str | None, gain: float, *, noise: float = 0.05, seed: int = 0
) -> GateEvidence:
    """Evidence of a challenger whose per-user NDCG is the champion's times (1 + gain),
    plus per-user noise (800 users)."""
    rng = np.random.default_rng(seed)
    champ = rng.uniform(0.0, 0.6, 800)
    chal = np.clip(champ * (1 + gain) + rng.normal(0, noise, 800), 0, 1)
    return gather_evidence(
        SLICE,
        scores(chal),
        None if champion is None else scores(champ),
        champion_version=champion,
        rule=GateRule(samples=500, seed=1),
    )


def scores(values: np.ndarray) -> UserScores:
    """Per-user values, each made of one hit on an item of the user's own."""
    users = np.array([f"u{i:04d}" for i in range(len(values))])
    hits = pd.DataFrame({"user_id": users, "item_id": [f"i{u}" for u in users], "ndcg": values})
    return UserScores(users, np.asarray(values, dtype=float), hits)


def test_first_version_becomes_champion_and_downloads_intact(
    registry: ModelRegistry, register: Callable[[float], str], bundle: Path, tmp_path: Path
) -> None:
    version = register(0.2)
    decision = registry.promote_on_evidence(version, evidence(None, 0.0))
    assert decision.promoted and "no champion" in decision.reason
    assert "gate slice, 5000 rows, 800 users" in decision.reason
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
    registry.promote_on_evidence(v1, evidence(None, 0.0))
    v2 = register(0.25)
    worse = registry.promote_on_evidence(v2, evidence(v1, -0.15), margin=0.02)
    assert not worse.promoted
    assert registry.champion_version() == v1 and registry.challenger_version() == v2
    tags = registry.versions()[0].tags
    assert tags[TAG_DECISION] == "kept_challenger" and "keep the champion" in tags[TAG_REASON]
    # The decision record: slice, size, time range, both scores, gain, interval, margin.
    assert tags["gate.slice"] == "gate" and tags["gate.rows"] == "5000"
    assert tags["gate.users"] == "800" and tags["gate.start_ms"] == str(SLICE.start_ms)
    assert tags["gate.champion_version"] == v1 and float(tags["gate.margin"]) == 0.02
    assert float(tags["gate.ci_low"]) < float(tags["gate.gain"]) < float(tags["gate.ci_high"])
    assert float(tags["gate.ci_high"]) < 0  # clearly worse
    v3 = register(0.33)
    better = registry.promote_on_evidence(v3, evidence(v1, 0.15), margin=0.02)
    assert better.promoted and better.champion_version == v1
    assert better.evidence is not None and better.evidence["gain"] > 0.1
    assert registry.champion_version() == v3
    info = {i.version: i for i in registry.versions()}
    assert info[v3].tags[TAG_DECISION] == "promoted" and info[v3].tags[TAG_PREVIOUS] == v1
    assert info[v3].aliases == [CHAMPION] and info[v2].aliases == []


def test_rule_needs_the_margin_on_average_and_no_plausible_loss_beyond_it(
    registry: ModelRegistry, register: Callable[[float], str]
) -> None:
    champion = register(0.40)
    registry.promote_on_evidence(champion, evidence(None, 0.0))
    tie = register(0.40)
    assert not registry.promote_on_evidence(tie, evidence(champion, 0.0), margin=0.02).promoted
    slightly = register(0.41)
    small = evidence(champion, 0.03, noise=0.01)  # +3 %, tight interval
    assert not registry.promote_on_evidence(slightly, small, margin=0.05).promoted
    assert registry.promote_on_evidence(slightly, small, margin=0.02).promoted
    assert registry.champion_version() == slightly
    # A mean gain above the margin with an interval reaching far below -margin: kept.
    noisy = register(0.42)
    champ = np.full(40, 0.5)
    chal = np.tile([0.1, 0.93], 20)  # mean 0.515: +3 %, but half the users lose 80 %
    wide = gather_evidence(
        SLICE,
        scores(chal),
        scores(champ),
        champion_version=slightly,
        rule=GateRule(samples=500, seed=1),
    )
    assert wide.gain is not None and wide.gain > 0.02
    assert wide.ci_low is not None and wide.ci_low < -0.02
    assert not registry.promote_on_evidence(noisy, wide, margin=0.02).promoted


def test_evidence_about_another_champion_never_promotes(
    registry: ModelRegistry, register: Callable[[float], str]
) -> None:
    v1, v2, v3 = register(0.1), register(0.2), register(0.3)
    registry.promote_on_evidence(v1, evidence(None, 0.0))
    registry.promote(v2, reason="by hand")
    d = registry.promote_on_evidence(v3, evidence(v1, 0.5))
    assert not d.promoted and f"scored against v{v1}" in d.reason and f"now v{v2}" in d.reason
    assert registry.champion_version() == v2
    d = registry.promote_on_evidence(v3, evidence(None, 0.5))  # scored when there was none
    assert not d.promoted and registry.champion_version() == v2


def test_rollback_walks_back_the_champion_chain(
    registry: ModelRegistry, register: Callable[[float], str]
) -> None:
    with pytest.raises(NotFound, match="no champion"):
        registry.rollback()
    v1, v2 = register(0.1), register(0.2)
    registry.promote_on_evidence(v1, evidence(None, 0.0))
    with pytest.raises(NotFound, match="no previous champion"):
        registry.rollback()
    registry.promote_on_evidence(v2, evidence(v1, 0.5))
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


def test_unknown_versions_aliases_and_evidence_fail_by_name(
    registry: ModelRegistry, register: Callable[[float], str], tmp_path: Path
) -> None:
    version = register(0.1)
    with pytest.raises(NotFound, match="no version 99"):
        registry.promote(99)
    with pytest.raises(NotFound, match="no version 99"):
        registry.promote_on_evidence(99, evidence(None, 0.0))
    with pytest.raises(NotFound, match="alias 'champion'"):
        registry.download_bundle(CHAMPION)
    registry.promote(version)
    other = register(0.2)
    empty = GateEvidence(SLICE, "ndcg@10", 0.2, champion_version=version)  # no scores
    with pytest.raises(InvalidInput, match="no scores"):
        registry.promote_on_evidence(other, empty)
    with pytest.raises(NotFound, match="bundle directory"):
        registry.log_and_register(tmp_path / "missing", params={}, metrics={})
    assert metric_key("ndcg@10") == "ndcg_at_10"


def test_aliases_follow_the_documented_lifecycle(
    registry: ModelRegistry, register: Callable[[float], str]
) -> None:
    """registered -> challenger; promoted -> champion, no challenger; refused -> challenger
    stays; the next refused one takes it over; a refusal never steals it from a newer one."""

    def aliases() -> dict[str, list[str]]:
        return {i.version: i.aliases for i in registry.versions()}

    v1 = register(0.30)
    assert aliases() == {v1: [CHALLENGER]}  # registered, gate not yet decided
    assert registry.promote_on_evidence(v1, evidence(None, 0.0)).promoted
    assert aliases() == {v1: [CHAMPION]}  # promoted: no challenger left waiting
    assert registry.challenger_version() is None

    v2 = register(0.25)
    assert aliases() == {v2: [CHALLENGER], v1: [CHAMPION]}
    assert not registry.promote_on_evidence(v2, evidence(v1, -0.15)).promoted
    assert aliases() == {v2: [CHALLENGER], v1: [CHAMPION]}  # refused: kept as challenger

    v3 = register(0.26)
    assert aliases() == {v3: [CHALLENGER], v2: [], v1: [CHAMPION]}
    assert not registry.promote_on_evidence(v3, evidence(v1, -0.12, seed=1)).promoted
    assert aliases() == {v3: [CHALLENGER], v2: [], v1: [CHAMPION]}  # replaced the refused v2

    # A late decision on an older version leaves a newer challenger where it is.
    v4 = register(0.27)
    assert not registry.promote_on_evidence(v2, evidence(v1, -0.15)).promoted
    assert registry.challenger_version() == v4
    # The champion asked again (a retried gate task) keeps its alias and its record.
    again = registry.promote_on_evidence(v1, evidence(None, 0.0))
    assert not again.promoted and again.reason == "already champion"
    assert aliases()[v1] == [CHAMPION]
    assert {i.version: i for i in registry.versions()}[v1].tags[TAG_DECISION] == "promoted"

    assert registry.promote_on_evidence(v4, evidence(v1, 0.2, seed=2)).promoted
    assert aliases() == {v4: [CHAMPION], v3: [], v2: [], v1: []}
    assert registry.rollback() == v1
    assert aliases() == {v4: [], v3: [], v2: [], v1: [CHAMPION]}  # demoted: no alias


def test_registry_calls_leave_mlflow_globals_and_environment_as_found(
    register: Callable[[float], str], registry: ModelRegistry, tmp_path: Path
) -> None:
    """Using the registry must not pin this process (or processes it starts later) to its
    store: MLflow's setters export URIs to ``os.environ``, and restoring through them once
    left ``MLFLOW_REGISTRY_URI`` at a store a later client then created afresh."""
    import os

    import mlflow
    from mlflow.tracking import _model_registry, _tracking_service

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env_before = {k: os.environ.get(k) for k in keys}
    globals_before = (_tracking_service.utils._tracking_uri, _model_registry.utils._registry_uri)
    version = register(0.3)
    registry.download_bundle(version, dst=tmp_path / "fetched")
    assert {k: os.environ.get(k) for k in keys} == env_before
    assert (_tracking_service.utils._tracking_uri, _model_registry.utils._registry_uri) == (
        globals_before
    )
    # And a client built afterwards from the tracking URI alone sees the same registry.
    uri = str(registry.settings.mlflow.tracking_uri)
    found = mlflow.MlflowClient(tracking_uri=uri).search_model_versions(
        f"name = '{registry.settings.mlflow.model_name}'"
    )
    assert version in {str(mv.version) for mv in found}
