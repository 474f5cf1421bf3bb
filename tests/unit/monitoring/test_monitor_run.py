"""Score drift, outcome counts and the scheduled check over an offline log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from rtrec.monitoring import (
    SCORE_COLUMNS,
    MonitorConfig,
    drift_report,
    monitor_offline_log,
    outcome_counts,
    score_features,
)

from rtrec.config import get_settings, load_settings
from rtrec.data import ShiftConfig, SyntheticConfig, generate

DAY = 86_400_000


class FakeBundle:
    """The two calls score_features makes: a user vector from history, top-k search."""

    history_len = 5

    def __init__(self, n_items: int = 200, dim: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.items = [f"item-{i}" for i in range(n_items)]
        emb = rng.normal(size=(n_items, dim)).astype(np.float32)
        self.emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        self.row = {item: i for i, item in enumerate(self.items)}

    def user_vectors(self, users: list[str], histories: list[list[str]]) -> np.ndarray:
        out = np.stack(
            [self.emb[[self.row[i] for i in h if i in self.row] or [0]].mean(0) for h in histories]
        )
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def search(self, vecs: np.ndarray, k: int):
        scores = vecs @ self.emb.T
        return -np.sort(-scores, axis=1)[:, :k], None


def _events(items: list[str], n: int, seed: int, start: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, 300, n)],
            "item_id": rng.choice(items, n),
            "event_type": rng.choice(["view", "click"], n, p=[0.8, 0.2]),
            "ts": start + np.sort(rng.integers(0, DAY, n)),
        }
    )


def test_score_features_shape_and_centroid() -> None:
    bundle = FakeBundle()
    ref, centroid = score_features(bundle, _events(bundle.items, 3000, 1, 0), sample=100)
    assert list(ref.columns) == list(SCORE_COLUMNS)
    assert len(ref) == 100  # the users behind 100 sampled events
    assert (ref["score_top1"] >= ref["score_mean"]).all()
    assert centroid.shape == (8,)
    cur, _ = score_features(bundle, _events(bundle.items, 3000, 2, DAY), centroid=centroid)
    assert cur["score_centroid_sim"].between(-1.0001, 1.0001).all()


def test_score_drift_alone_makes_a_verdict() -> None:
    """A model-side shift with stable stream features is not diluted by them."""
    bundle = FakeBundle()
    head, tail = bundle.items[:20], bundle.items[100:]
    ref_s, centroid = score_features(bundle, _events(head, 4000, 1, 0))
    stable, _ = score_features(bundle, _events(head, 4000, 2, DAY), centroid=centroid)
    # New users with one unfamiliar item each: sharper, different top-k scores.
    moved, _ = score_features(bundle, _events(tail, 250, 3, DAY), centroid=centroid)
    features = pd.DataFrame({"event_type": ["view", "click"] * 500, "item_pop_rank": 1.0})
    ref_f = pd.concat([features, ref_s], axis=1)
    threshold = MonitorConfig().score_threshold

    def judge(cur: pd.DataFrame):
        return drift_report(ref_f, pd.concat([features, cur], axis=1), score_threshold=threshold)

    quiet, loud = judge(stable), judge(moved)
    assert not quiet.drifted, quiet.reason
    assert loud.drifted and loud.reason.startswith("score drift"), loud.reason
    assert "score_centroid_sim" in loud.drifted_columns
    assert not {"event_type", "item_pop_rank"} & set(loud.drifted_columns)


def test_outcome_counts_clicks_per_view_or_served() -> None:
    ref = pd.DataFrame({"event_type": ["view"] * 90 + ["click"] * 10})
    cur = pd.DataFrame({"event_type": ["view"] * 50 + ["click"] * 25})
    assert outcome_counts(ref, cur) == ((10, 90), (25, 50))
    assert outcome_counts(ref, cur, served=(1000, 500)) == ((10, 1000), (25, 500))
    assert outcome_counts(ref.iloc[90:], cur) is None  # no views: no rate


@pytest.fixture(scope="module")
def shifted_log(tmp_path_factory: pytest.TempPathFactory):
    from rtrec.features import write_offline_metadata
    from rtrec.streaming import write_events

    cfg = SyntheticConfig.small(n_users=1_000, n_items=500, n_events=60_000, days=21)
    ds = generate(cfg.model_copy(update={"shift": ShiftConfig(at_fraction=0.7)}))
    work = tmp_path_factory.mktemp("monitor-work")
    settings = load_settings(work_dir=work)
    write_events(settings.offline_dir / "events", ds.events.assign(value=1.0), partition=0)
    write_offline_metadata(settings, ds.items, ds.users)
    return settings, int(ds.meta["shift_ts"])


def test_monitor_offline_log_reads_log_and_catalog(shifted_log) -> None:
    settings, shift = shifted_log

    def run(now_ms: int):
        # The log was written here, not by a stream processor: no watermark to check.
        return monitor_offline_log(
            settings, now_ms=now_ms, scores=False, alert=False, coverage="unchecked"
        )

    calm, hot = run(shift - DAY), run(shift + DAY)
    assert not calm.drifted, calm.reason
    assert hot.drifted, hot.reason
    assert "category" in {c.column for c in hot.columns}  # the catalog was read
    assert hot.outcome is not None and hot.outcome.reference_rate > 0
    assert hot.as_of is not None and hot.as_of["mode"] == "unchecked"
    assert hot.summary.startswith("drifted: ") and "as of the offline log's watermark" in (
        hot.summary
    )
    assert hot.windows == {
        "reference": [shift - 7 * DAY, shift],
        "current": [shift, shift + DAY],
    }


def test_monitor_offline_log_window_too_small_is_not_judged(shifted_log) -> None:
    settings, shift = shifted_log
    verdict = monitor_offline_log(
        settings,
        now_ms=shift + DAY,
        window_days=0.001,  # ~86 s: a handful of events
        scores=False,
        alert=False,
        record=False,
        coverage="unchecked",
    )
    assert verdict.status == "not judged" and not verdict.drifted
    assert verdict.summary.startswith("not judged: windows have ")
    assert verdict.current_rows < 200


def test_monitor_offline_log_rejects_an_unknown_coverage_mode(shifted_log) -> None:
    from rtrec.errors import InvalidInput

    settings, _ = shifted_log
    with pytest.raises(InvalidInput, match="coverage 'soon' is not one of"):
        monitor_offline_log(settings, scores=False, alert=False, coverage="soon")  # type: ignore[arg-type]


def test_monitor_offline_log_waiting_without_a_broker_fails_loudly(
    shifted_log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default coverage is "wait": with no broker to ask for the end offsets, the check
    says it cannot tell whether the log is complete rather than judge it anyway."""
    import rtrec.streaming.coverage

    from rtrec.errors import Unavailable
    from tests.conftest import free_port

    monkeypatch.setattr(rtrec.streaming.coverage, "BROKER_TIMEOUT_MS", 1000)
    settings, shift = shifted_log
    nowhere = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"bootstrap_servers": f"127.0.0.1:{free_port()}"}
            )
        }
    )
    with pytest.raises(Unavailable, match="cannot tell how much of topic"):
        monitor_offline_log(nowhere, now_ms=shift, scores=False, alert=False, wait_s=1)


def test_cli_check_exit_codes(shifted_log, monkeypatch: pytest.MonkeyPatch) -> None:
    from rtrec.app.cli import main

    settings, shift = shifted_log
    monkeypatch.setenv("RTREC_WORK_DIR", str(settings.work_dir))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        base = ["monitor", "check", "--no-scores", "--no-alert", "--coverage", "unchecked"]
        calm = runner.invoke(main, [*base, "--json", "--now-ms", str(shift - DAY)])
        hot = runner.invoke(main, [*base, "--json", "--now-ms", str(shift + DAY)])
        small = runner.invoke(main, [*base, "--window-days", "0.001", "--now-ms", str(shift)])
    finally:
        get_settings.cache_clear()
    assert calm.exit_code == 0, calm.output
    assert hot.exit_code == 10, hot.output
    assert '"drifted": true' in hot.output and '"status": "drifted"' in hot.output
    assert small.exit_code == 11, small.output  # neither stable nor drifted
    assert "[NOT JUDGED]" in small.output and "not judged: windows have" in small.output
    assert "offline log (unchecked)" in small.output
    assert len(list(Path(str(settings.monitoring.workspace)).rglob("snapshots/*.json"))) >= 2
