"""``training.promotion: ab``: the gate starts an A/B test instead of promoting, against a
real sqlite-backed MLflow in tmp_path (the same setup as ``test_registry``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rtrec.dags.steps import run_step
from rtrec.training.registry import TAG_DECISION, TAG_REASON, ModelRegistry

from rtrec.config import Settings, load_settings
from rtrec.errors import NotFound
from tests.unit.training.test_registry import bundle, evidence, work_dir  # noqa: F401

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def settings(work_dir: Path, request: pytest.FixtureRequest) -> Settings:  # noqa: F811
    s = load_settings(work_dir=work_dir)
    s.mlflow.model_name = f"ab-{request.node.name}"[:60]
    return s


@pytest.fixture
def register(bundle: Path) -> Callable[[ModelRegistry], str]:  # noqa: F811
    def _register(registry: ModelRegistry) -> str:
        _, version = registry.log_and_register(
            bundle, params={"epochs": 1}, metrics={"gate_ndcg@10": 0.3}
        )
        return version

    return _register


def test_ab_needs_a_challenger_share() -> None:
    with pytest.raises(ValueError, match="ab_challenger_share is 0"):
        load_settings(training={"promotion": "ab"})
    assert load_settings().training.promotion == "direct"


def test_gate_passed_version_becomes_the_challenger_not_the_champion(
    settings: Settings, register: Callable[[ModelRegistry], str]
) -> None:
    direct = ModelRegistry(settings)
    v1 = register(direct)
    direct.promote_on_evidence(v1, evidence(None, 0.0))

    settings.training.promotion, settings.serving.ab_challenger_share = "ab", 0.3
    registry = ModelRegistry(settings)
    v2 = register(registry)
    # Not judged yet: no alias, so serving does not split traffic onto it.
    assert registry.challenger_version() is None
    # The training DAG's gate step, as its operator runs it.
    fit = {"evidence": evidence(v1, 0.3).to_dict()}
    decision = run_step("promote", {"version": v2, "fit": fit}, settings=settings)
    assert decision["promoted"] is False and decision["ab_test"] is True
    assert f"A/B test against champion v{v1} at 30% of users" in decision["reason"]
    assert decision["champion_version"] == v1
    assert registry.champion_version() == v1 and registry.challenger_version() == v2
    tags = {i.version: i.tags for i in registry.versions()}
    assert tags[v2][TAG_DECISION] == "ab_test" and tags[v1][TAG_DECISION] == "promoted"

    # A refused version is not tested: the running experiment keeps its challenger.
    v3 = register(registry)
    refused = registry.promote_on_evidence(v3, evidence(v1, -0.2))
    assert not refused.promoted and not refused.ab_test
    assert registry.challenger_version() == v2 and registry.champion_version() == v1
    tags = {i.version: i.tags for i in registry.versions()}
    assert tags[v3][TAG_DECISION] == "refused"


def test_first_model_under_ab_is_promoted(
    settings: Settings, register: Callable[[ModelRegistry], str]
) -> None:
    settings.training.promotion, settings.serving.ab_challenger_share = "ab", 0.5
    registry = ModelRegistry(settings)
    v1 = register(registry)
    decision = registry.promote_on_evidence(v1, evidence(None, 0.0))
    assert decision.promoted and not decision.ab_test
    assert registry.champion_version() == v1 and registry.challenger_version() is None


def test_archive_challenger_drops_its_alias_and_records_why(
    settings: Settings, register: Callable[[ModelRegistry], str]
) -> None:
    registry = ModelRegistry(settings)
    v1 = register(registry)
    registry.promote_on_evidence(v1, evidence(None, 0.0))
    v2 = register(registry)
    assert registry.challenger_version() == v2
    registry.archive_challenger(v2, reason="A/B 1-vs-2: champion wins")
    assert registry.challenger_version() is None and registry.champion_version() == v1
    tags = {i.version: i.tags for i in registry.versions()}[v2]
    assert tags[TAG_DECISION] == "archived" and tags[TAG_REASON] == "A/B 1-vs-2: champion wins"
    with pytest.raises(NotFound, match="no version 99"):
        registry.archive_challenger("99", reason="x")


def test_an_operator_starts_an_experiment_on_any_version_but_the_champion(
    settings: Settings, register: Callable[[ModelRegistry], str]
) -> None:
    from rtrec.errors import InvalidInput

    registry = ModelRegistry(settings)
    v1 = register(registry)
    registry.promote(v1, reason="first")
    v2 = register(registry)
    registry.start_experiment(v2, reason="A/A check")
    assert registry.challenger_version() == v2 and registry.champion_version() == v1
    tags = {i.version: i.tags for i in registry.versions()}[v2]
    assert tags[TAG_DECISION] == "ab_test" and tags[TAG_REASON] == "A/A check"
    with pytest.raises(InvalidInput, match="is the champion"):
        registry.start_experiment(v1)
    with pytest.raises(NotFound, match="no version 99"):
        registry.start_experiment("99")
