"""The training pipeline end to end: synthetic events -> Spark -> two-tower -> MLflow.

Real local Spark, real torch training, a real sqlite MLflow registry in tmp_path; the
registered champion's bundle is downloaded and loaded the way serving does it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from rtrec.training import WEIGHTS
from rtrec.training.dataset import TrainingSets, stop_spark
from rtrec.training.gate import GateRule, SliceInfo, UserScores, gather_evidence
from rtrec.training.pipeline import MODEL_NAME, FitOutput, train
from rtrec.training.registry import CHAMPION, TAG_DECISION, ModelRegistry

from rtrec.config import Settings, get_settings, load_settings
from rtrec.errors import Unavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    s = load_settings(work_dir=tmp_path_factory.mktemp("train-work"))
    s.spark.master = "local[2]"
    s.spark.driver_memory = "1g"
    yield s
    stop_spark()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic data set saved to disk, as ``rtrec data generate --small`` makes."""
    from rtrec.data import SyntheticConfig, generate

    cfg = SyntheticConfig.small(n_users=600, n_items=300, n_events=30_000, days=14)
    return generate(cfg).save(tmp_path_factory.mktemp("data") / "synthetic")


def _popularity_fitter(boost: float = 0.0) -> Callable[..., FitOutput]:
    """A stand-in model side (top-10 popular items): exercises the orchestration only.

    Its gate evidence is real: per gate user, the share of events on the model's top 10
    (plus ``boost``, spread as one hit of the user's own so the item reweighting sees it
    everywhere), for the challenger and for the champion's own top 10 (read from the
    registered bundle), paired over the same users."""

    def scores(items: set[str], df: pd.DataFrame, plus: float = 0.0) -> UserScores:
        per_event = df["item_id"].isin(items) / df.groupby("user_id")["item_id"].transform("size")
        hits = (
            pd.DataFrame({"user_id": df["user_id"], "item_id": df["item_id"], "ndcg": per_event})
            .groupby(["user_id", "item_id"], as_index=False)["ndcg"]
            .sum()
        )
        users = np.array(sorted(df["user_id"].unique()))
        if plus:
            extra = pd.DataFrame({"user_id": users, "item_id": [f"+{u}" for u in users]})
            hits = pd.concat([hits, extra.assign(ndcg=plus)], ignore_index=True)
        values = hits.groupby("user_id")["ndcg"].sum().reindex(users).fillna(0.0)
        return UserScores(users, values.to_numpy(), hits)

    def fitter(settings: Settings, sets: TrainingSets, *, out_dir: Path, **_: object) -> FitOutput:
        train_df, val_df, gate_df = (sets.read(s) for s in ("train", "validation", "gate"))
        top = set(train_df["item_id"].value_counts().index[:10])
        chal = scores(top, gate_df, boost)
        registry = ModelRegistry(settings)
        version = registry.champion_version()
        champ = None
        if version is not None:
            champ_top = set((registry.download_bundle(version) / "top.txt").read_text().split())
            champ = scores(champ_top, gate_df)
        span = sets.ts_range["gate"]
        evidence = gather_evidence(
            SliceInfo("gate", len(gate_df), len(chal.users), span[0], span[1]),
            chal,
            champ,
            champion_version=version,
            rule=GateRule(samples=200),
        )
        bundle = out_dir / "bundle"
        bundle.mkdir(parents=True)
        (bundle / "top.txt").write_text("\n".join(sorted(top)))
        return FitOutput(
            bundle,
            val_metrics={MODEL_NAME: {"ndcg@10": float(scores(top, val_df).values.mean())}},
            gate_metrics={MODEL_NAME: {"ndcg@10": float(chal.values.mean())}},
            evidence=evidence.to_dict(),
            params={"model": "top10", "boost": boost},
        )

    return fitter


def test_orchestration_from_data_to_gated_registry(settings: Settings, data_dir: Path) -> None:
    """Event log from --data, real Spark splits, real MLflow: champion, tie, better, download."""
    first = train(settings, data=data_dir, progress=False, fitter=_popularity_fitter())
    counts = first.sets.counts
    assert counts["train"] > counts["validation"] > 0 and counts["gate"] > 0 == counts["test"]
    assert sum(counts.values()) == 30_000
    assert first.version == "1" and first.decision is not None and first.decision.promoted
    tie = train(settings, data=data_dir, progress=False, fitter=_popularity_fitter())
    assert tie.gate_value == first.gate_value
    assert tie.decision is not None and not tie.decision.promoted
    assert "keep the champion" in tie.decision.reason and "gain +0.00%" in tie.decision.reason
    better = train(settings, data=data_dir, progress=False, fitter=_popularity_fitter(0.05))
    assert better.decision is not None and better.decision.promoted
    registry = ModelRegistry(settings)
    assert registry.champion_version() == better.version == "3"
    fetched = registry.download_bundle(CHAMPION)
    assert (fetched / "top.txt").read_text() == (better.fit.bundle_dir / "top.txt").read_text()
    run = registry.client.get_run(better.run_id)
    assert run.data.params["protocol"] == "temporal" and run.data.params["boost"] == "0.05"
    assert "gate_ndcg_at_10" in run.data.metrics
    tags = {i.version: i.tags for i in registry.versions()}["3"]
    assert tags["gate.champion_version"] == "1" and float(tags["gate.ci_low"]) > 0


def test_pipeline_registers_a_champion_whose_bundle_loads(
    tmp_path: Path,
    data_dir: Path,
    settings: Settings,  # settings: the shared Spark session
) -> None:
    """The real model side: two-tower + baselines, a bundle that loads after download."""
    pytest.importorskip(
        "rtrec.training.trainer", reason="model side (rtrec.training.trainer) not built yet"
    )
    from rtrec.training.artifacts import load_bundle

    settings = load_settings(work_dir=tmp_path)  # a registry of its own
    result = train(settings, data=data_dir, epochs=2, progress=False)
    assert sum(result.sets.counts.values()) == 30_000
    assert result.version == "1" and result.decision is not None and result.decision.promoted
    split, heldout = result.heldout
    assert split == "gate" and result.test_metrics == {}  # the product split has no test
    assert MODEL_NAME in heldout and len(heldout) >= 3  # + 2 baselines
    assert result.report_md is not None and "ndcg@10" in result.report_md.read_text().lower()
    assert result.report_png is not None and result.report_png.read_bytes()[:4] == b"\x89PNG"
    # The served model learns the synthetic structure: on the gate slice it beats
    # MostPopular, which ranks everyone alike (a floor a broken model would not clear).
    assert heldout[MODEL_NAME]["ndcg@10"] > 1.2 * heldout["MostPopular"]["ndcg@10"]
    # The evidence names the slice it judged: the gate split's rows and time range.
    evidence = result.fit.evidence
    assert evidence["slice"]["rows"] == result.sets.counts["gate"]
    assert [evidence["slice"]["start_ms"], evidence["slice"]["end_ms"]] == (
        result.sets.ts_range["gate"]
    )
    assert evidence["slice"]["users"] == heldout[MODEL_NAME]["users"]
    # The served index's recall was measured on the gate users' queries.
    assert result.fit.index["recall@100"] >= settings.training.min_index_recall
    assert "gate-slice users" in result.fit.index["source"]
    # ``--data`` events never went through the stream: the ranker's states are the event
    # log's, and the run says so (its info, logged into the bundle's ranker.json).
    states = result.fit.ranker["ranker_states"]
    assert states["source"] == "event_log" and "not the stream's offline log" in states["reason"]

    registry = ModelRegistry(settings)
    assert registry.champion_version() == "1"
    info = registry.versions()[0]
    assert info.tags[TAG_DECISION] == "promoted" and info.metrics["gate_ndcg_at_10"] > 0
    # Both objectives were fitted; the one kept is the better on validation, and says so.
    params = registry.client.get_run(result.run_id).data.params
    scores = {n: float(params[f"candidate.{n}.val_ndcg_at_10"]) for n in ("next_item", "user_bag")}
    assert params["candidate"] == max(scores, key=scores.__getitem__)
    assert (
        params["objective"]
        == {"next_item": "next_item", "user_bag": "multinomial"}[params["candidate"]]
    )
    bundle = load_bundle(registry.download_bundle(CHAMPION))
    assert bundle is not None

    # Same data, same seed: the retrained model ties, so the gate keeps it as challenger.
    again = train(settings, data=data_dir, epochs=2, progress=False)
    assert again.version == "2" and again.decision is not None
    assert not again.decision.promoted and "keep the champion" in again.decision.reason
    # The gate judged both as served: the champion's bundle through the request path
    # (its frozen sources and ranker), the challenger's two stages as fitted; they tie.
    judged = again.fit.gate_metrics
    assert judged["current_champion"]["ndcg@10"] == pytest.approx(judged["two_stage"]["ndcg@10"])
    assert "systems two_stage vs two_stage:" in again.decision.reason
    assert again.fit.evidence["challenger"] == pytest.approx(judged["two_stage"]["ndcg@10"])
    assert registry.champion_version() == "1" and registry.challenger_version() == "2"

    # A champion that exists but cannot be scored fails the run, naming it; nothing is
    # registered and the champion stays.
    broken = tmp_path / "broken-bundle"
    broken.mkdir()
    (broken / WEIGHTS).write_bytes(b"not a model")
    _, bad = registry.log_and_register(broken, params={}, metrics={})
    registry.promote(bad, reason="an operator's mistake")
    with pytest.raises(Unavailable, match=f"champion v{bad} exists but cannot be scored"):
        train(settings, data=data_dir, epochs=1, progress=False)
    assert registry.champion_version() == bad and len(registry.versions()) == 3


def test_cli_lists_promotes_and_rolls_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtrec.app.cli import main

    monkeypatch.setenv("RTREC_WORK_DIR", str(settings.work_dir))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        listed = runner.invoke(main, ["model", "list"])
        assert listed.exit_code == 0, listed.output
        assert "champion" in listed.output and "kept_challenger" in listed.output
        promoted = runner.invoke(main, ["model", "promote", "2", "--reason", "operator says so"])
        assert promoted.exit_code == 0 and "v3 -> v2" in promoted.output
        rolled = runner.invoke(main, ["model", "rollback"])
        assert rolled.exit_code == 0 and "v2 -> v3" in rolled.output
        missing = runner.invoke(main, ["model", "promote", "42"])
        assert missing.exit_code == 3 and "no version 42" in missing.output
    finally:
        get_settings.cache_clear()


def test_cli_train_prints_metrics_version_and_gate_decision(
    settings: Settings, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rtrec.training.pipeline

    from rtrec.app.cli import main

    monkeypatch.setattr(rtrec.training.pipeline, "fit_and_evaluate", _popularity_fitter())
    monkeypatch.setenv("RTREC_WORK_DIR", str(settings.work_dir))
    monkeypatch.setenv("RTREC_SPARK__MASTER", "local[2]")
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(main, ["train", "--data", str(data_dir), "--epochs", "1"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    assert "gate metrics (temporal protocol" in out.output and "ndcg@10" in out.output
    assert "registered version 4" in out.output
    assert "kept as challenger" in out.output and "keep the champion" in out.output
