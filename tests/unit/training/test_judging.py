"""The promotion gate judges the systems users would get: the challenger's two stages
against the champion as serving answers with it (its own two stages, or its retrieval
order when it declares no ranker or its ranker cannot be loaded, which is flagged)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rtrec.training.artifacts import RANKER_DIR, RANKER_META, load_bundle, save_bundle
from rtrec.training.evaluate import rank
from rtrec.training.examples import histories_within
from rtrec.training.gate import UserScores, decide, evidence_tags, gather_evidence
from rtrec.training.index import build_index
from rtrec.training.judging import gate_evidence, gate_rule
from rtrec.training.ranker import Ranker, TwoStage, ranking_rows
from rtrec.training.ranker_bundle import save_ranker
from rtrec.training.results import CHAMPION_KEY
from rtrec.training.served_system import ServedTwoStage, served_system
from rtrec.training.sets import Frames, TrainingSets
from rtrec.training.trainer import TrainConfig, fit
from rtrec.training.two_stage import SourceConfig, build_generator

from rtrec.config import Settings, load_settings
from tests.unit.training.test_two_stage import DAY, clustered

N = 40


def _ranker(rows: pd.DataFrame) -> Ranker:
    params = {**Ranker().params, "num_threads": 1, "min_data_in_leaf": 5}
    return Ranker(max_rounds=40, patience=10, params=params, grid=({},)).fit(rows)


def _bundle(directory: Path, model, two_stage: TwoStage | None) -> Path:
    extra = {}
    if two_stage is not None:
        extra["ranker"] = save_ranker(directory, two_stage, model.item_ids, info={})
    index = build_index(model.item_keys(), use_gpu=False)
    save_bundle(directory, model=model, index=index, extra=extra)
    return directory


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """One two-tower model and its sources, with two rankers: one fitted on what users did
    next, one on its opposite (it ranks what they skip first). Bundles: the two-tower with
    the opposite ranker, and the two-tower alone."""
    events = histories_within(clustered(n_users=120, n_items=120, per_user=24), 10)
    events.loc[events.index % 7 == 0, "event_type"] = "click"
    cut, now = 13 * DAY, 18 * DAY
    state, labels = events[events.ts < cut], events[(events.ts >= cut) & (events.ts < now)]
    past, future = events[events.ts < now], events[events.ts >= now]
    cfg = TrainConfig(epochs=2, dim=16, history_len=10, select_best=False)
    config = SourceConfig.served(history_limit=12, neighbours=6)
    earlier = build_generator(state, fit(state, cfg), ease_l2=10.0, per_source=30, config=config)
    rows = ranking_rows(earlier, state, labels, now=cut, n=N)
    model = fit(past, cfg)
    final = build_generator(past, model, ease_l2=10.0, per_source=30, config=config)
    good = TwoStage(final, _ranker(rows), n=N)
    opposite = TwoStage(final, _ranker(rows.assign(label=1 - rows["label"])), n=N)
    root = tmp_path_factory.mktemp("bundles")
    frames = Frames(past, past.iloc[:0], future, future.iloc[:0])
    span = [int(future.ts.min()), int(future.ts.max())]
    sets = TrainingSets(root, "temporal", {"gate": len(future)}, 10, ts_range={"gate": span})
    return {
        "settings": load_settings(work_dir=root / "work"),
        "sets": sets,
        "frames": frames,
        "model": model,
        "good": good,
        "opposite": opposite,
        "with_opposite": _bundle(root / "opposite", model, opposite),
        "single_stage": _bundle(root / "single", model, None),
    }


def _judge(world, champion_dir: Path, metrics: dict | None = None):
    frames = world["frames"]
    retrieval = rank(world["model"], frames.fit_part, frames.gate)
    two_stage = rank(world["good"], frames.fit_part, frames.gate)
    bundle = load_bundle(champion_dir, use_gpu=False)
    metrics = {} if metrics is None else metrics
    evidence = gate_evidence(
        world["settings"], world["sets"], frames, retrieval, two_stage, ("1", bundle), metrics
    )
    return evidence, retrieval, two_stage, bundle


def test_the_served_path_offline_ranks_as_the_training_path(world) -> None:
    frames = world["frames"]
    bundle = load_bundle(world["with_opposite"], use_gpu=False)
    scorer, system, flag = served_system(bundle)
    assert isinstance(scorer, ServedTwoStage) and system == "two_stage" and flag is None
    served = rank(scorer, frames.fit_part, frames.gate)
    trained = rank(world["opposite"], frames.fit_part, frames.gate)
    assert served.summary["users"] == trained.summary["users"] > 100
    for metric in ("ndcg@10", "recall@10", "recall@50"):
        assert served.summary[metric] == pytest.approx(trained.summary[metric], abs=2e-3)


def test_a_challenger_better_only_in_its_ranker_passes_the_gate(world) -> None:
    settings: Settings = world["settings"]
    metrics: dict = {}
    evidence, retrieval, two_stage, bundle = _judge(world, world["with_opposite"], metrics)
    # Same two-tower on both sides: judged by retrieval order, they tie and the gate keeps
    # the champion. That comparison is not what users would get.
    same = gather_evidence(
        evidence.slice,
        UserScores.from_ranking(retrieval),
        UserScores.from_ranking(rank(bundle, world["frames"].fit_part, world["frames"].gate)),
        champion_version="1",
        rule=gate_rule(settings),
    )
    assert same.gain == pytest.approx(0.0, abs=1e-9)
    assert not decide(same, margin=settings.training.gate_margin).promoted
    # Judged as served, the challenger's ranker beats the champion's.
    assert (evidence.challenger_system, evidence.champion_system) == ("two_stage", "two_stage")
    assert evidence.champion_flag is None
    assert evidence.challenger == pytest.approx(two_stage.summary["ndcg@10"])
    assert evidence.champion == pytest.approx(metrics[CHAMPION_KEY]["ndcg@10"])
    assert evidence.gain > settings.training.gate_margin and evidence.ci_low > 0
    outcome = decide(evidence, margin=settings.training.gate_margin)
    assert outcome.promoted and "systems two_stage vs two_stage:" in outcome.reason


def test_a_champion_without_a_ranker_is_judged_by_its_retrieval_order_flagged(world) -> None:
    metrics: dict = {}
    evidence, _, _, bundle = _judge(world, world["single_stage"], metrics)
    frames = world["frames"]
    alone = rank(bundle, frames.fit_part, frames.gate).summary
    assert evidence.champion == pytest.approx(alone["ndcg@10"])
    assert metrics[CHAMPION_KEY] == alone
    assert (evidence.challenger_system, evidence.champion_system) == ("two_stage", "retrieval")
    assert evidence.champion_flag == (
        "champion v1: it declares no ranker: judged by its retrieval order"
    )
    margin = world["settings"].training.gate_margin
    reason = decide(evidence, margin=margin).reason
    assert f"systems two_stage vs retrieval ({evidence.champion_flag})" in reason
    tags = evidence_tags(evidence, margin=margin)
    assert tags["gate.champion_system"] == "retrieval"
    assert tags["gate.champion_flag"] == evidence.champion_flag


def test_a_champion_whose_ranker_cannot_load_is_judged_as_serving_falls_back(
    world, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(world["with_opposite"], damaged)
    meta = damaged / RANKER_DIR / RANKER_META
    meta.write_text(meta.read_text().replace('"prior_weight"', '"prior_weight" '))
    evidence, _, _, bundle = _judge(world, damaged)
    frames = world["frames"]
    assert evidence.champion_system == "retrieval"
    assert "its ranker cannot be loaded (InvalidInput:" in str(evidence.champion_flag)
    assert "fails its checksum" in str(evidence.champion_flag)
    warned = [r for r in caplog.records if r.name == "rtrec.training.served_system"]
    assert [r.levelname for r in warned] == ["WARNING"]
    assert warned[0].message.startswith("gate: champion v1: its ranker cannot be loaded")
    alone = rank(bundle, frames.fit_part, frames.gate).summary["ndcg@10"]
    assert evidence.champion == pytest.approx(alone)


def test_without_a_champion_the_evidence_names_the_challengers_system(world) -> None:
    frames = world["frames"]
    retrieval = rank(world["model"], frames.fit_part, frames.gate)
    for two_stage, system in (
        (None, "retrieval"),
        (rank(world["good"], *_seen_gate(frames)), "two_stage"),
    ):
        evidence = gate_evidence(
            world["settings"], world["sets"], frames, retrieval, two_stage, None, {}
        )
        assert evidence.challenger_system == system and evidence.champion_system is None
        assert f"({system})" in decide(evidence, margin=0.02).reason
        assert np.isfinite(evidence.challenger)


def _seen_gate(frames: Frames) -> tuple[pd.DataFrame, pd.DataFrame]:
    return frames.fit_part, frames.gate
