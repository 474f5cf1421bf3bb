"""The training pipeline end to end: synthetic events -> Spark -> two-tower -> MLflow.

Real local Spark, real torch training, a real sqlite MLflow registry in tmp_path; the
registered champion's bundle is downloaded and loaded the way serving does it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from rtrec.config import Settings, get_settings, load_settings
from training.dataset import TrainingSets, stop_spark
from training.pipeline import MODEL_NAME, FitOutput, train
from training.registry import CHAMPION, TAG_DECISION, ModelRegistry

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
    """A stand-in model side (top-10 popular items): exercises the orchestration only."""

    def fitter(settings: Settings, sets: TrainingSets, *, out_dir: Path, **_: object) -> FitOutput:
        train_df, val_df, test_df = (sets.read(s) for s in ("train", "validation", "test"))
        top = set(train_df["item_id"].value_counts().index[:10])
        hit = lambda df: float(df["item_id"].isin(top).mean()) + boost  # noqa: E731
        bundle = out_dir / "bundle"
        bundle.mkdir(parents=True)
        (bundle / "top.txt").write_text("\n".join(sorted(top)))
        return FitOutput(
            bundle,
            val_metrics={MODEL_NAME: {"ndcg@10": hit(val_df)}},
            test_metrics={MODEL_NAME: {"ndcg@10": hit(test_df)}},
            params={"model": "top10", "boost": boost},
        )

    return fitter


def test_orchestration_from_data_to_gated_registry(settings: Settings, data_dir: Path) -> None:
    """Event log from --data, real Spark splits, real MLflow: champion, tie, better, download."""
    first = train(settings, data=data_dir, progress=False, fitter=_popularity_fitter())
    assert first.sets.counts["train"] > first.sets.counts["test"] > 0
    assert sum(first.sets.counts.values()) == 30_000
    assert first.version == "1" and first.decision is not None and first.decision.promoted
    tie = train(settings, data=data_dir, progress=False, fitter=_popularity_fitter())
    assert tie.val_metric == first.val_metric
    assert tie.decision is not None and not tie.decision.promoted
    assert "does not beat" in tie.decision.reason
    better = train(settings, data=data_dir, progress=False, fitter=_popularity_fitter(0.05))
    assert better.decision is not None and better.decision.promoted
    registry = ModelRegistry(settings)
    assert registry.champion_version() == better.version == "3"
    fetched = registry.download_bundle(CHAMPION)
    assert (fetched / "top.txt").read_text() == (better.fit.bundle_dir / "top.txt").read_text()
    run = registry.client.get_run(better.run_id)
    assert run.data.params["protocol"] == "temporal" and run.data.params["boost"] == "0.05"
    assert "test_ndcg_at_10" in run.data.metrics


def test_pipeline_registers_a_champion_whose_bundle_loads(
    tmp_path: Path,
    data_dir: Path,
    settings: Settings,  # settings: the shared Spark session
) -> None:
    """The real model side: two-tower + baselines, a bundle that loads after download."""
    pytest.importorskip("training.trainer", reason="model side (training.trainer) not built yet")
    from training.artifacts import load_bundle

    settings = load_settings(work_dir=tmp_path)  # a registry of its own
    result = train(settings, data=data_dir, epochs=2, progress=False)
    assert sum(result.sets.counts.values()) == 30_000
    assert result.version == "1" and result.decision is not None and result.decision.promoted
    assert MODEL_NAME in result.test_metrics and len(result.test_metrics) >= 3  # + 2 baselines
    assert result.report_md is not None and "ndcg@10" in result.report_md.read_text().lower()
    assert result.report_png is not None and result.report_png.read_bytes()[:4] == b"\x89PNG"
    # The trained model learns the synthetic structure: it beats MostPopular on validation.
    popular = next(v for k, v in result.fit.val_metrics.items() if "pop" in k.lower())
    assert result.val_metric > popular["ndcg@10"]

    registry = ModelRegistry(settings)
    assert registry.champion_version() == "1"
    info = registry.versions()[0]
    assert info.tags[TAG_DECISION] == "promoted" and info.metrics["val_ndcg_at_10"] > 0
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
    assert not again.decision.promoted and "does not beat" in again.decision.reason
    assert registry.champion_version() == "1" and registry.challenger_version() == "2"


def test_cli_lists_promotes_and_rolls_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtrec.cli import main

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
    import training.pipeline
    from rtrec.cli import main

    monkeypatch.setattr(training.pipeline, "fit_and_evaluate", _popularity_fitter())
    monkeypatch.setenv("RTREC_WORK_DIR", str(settings.work_dir))
    monkeypatch.setenv("RTREC_SPARK__MASTER", "local[2]")
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(main, ["train", "--data", str(data_dir), "--epochs", "1"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    assert "test metrics (temporal protocol" in out.output and "ndcg@10" in out.output
    assert "registered version 4" in out.output
    assert "kept as challenger" in out.output and "does not beat" in out.output
