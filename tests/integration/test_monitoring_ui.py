"""The Evidently dashboard after real checks, served by ``rtrec monitor ui``, in Chromium.

Checks over a shifted synthetic stream (before and after the shift) fill the project,
then one check whose current window holds no events (not judged); the UI process is the
one ``rtrec monitor ui`` starts; headless Chromium loads the project page, and the
rendered DOM must hold every panel with its points, threshold lines, a drift-share axis
over [0, 1], and the not-judged check with its reason. The screenshot is kept under
``test-artifacts/``.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from rtrec.monitoring.dashboards import FEATURE_COLUMNS, SCORE_COLUMNS

from rtrec.config import Settings, get_settings, load_settings
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DAY = 86_400_000
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--force-prefers-reduced-motion",
    "--window-size=1400,2800",
    "--virtual-time-budget=15000",
]


def _scores(n: int, shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "score_top1": rng.normal(0.8 - shift, 0.05, n),
            "score_mean": rng.normal(0.6 - shift, 0.05, n),
            "score_centroid_sim": rng.normal(0.5 - shift, 0.1, n),
        }
    )


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str, str]]:
    """Four judged checks (two before the shift, two after) and one not judged (its
    current window lies past the data), then the UI started."""
    from rtrec.monitoring import check, ensure_project
    from rtrec.monitoring.monitor import outcome_counts, split_windows

    from rtrec.app import stack
    from rtrec.data import ShiftConfig, SyntheticConfig, generate

    work = tmp_path_factory.mktemp("monitor-ui")
    settings = load_settings(work_dir=work)
    cfg = SyntheticConfig.small(n_users=1_000, n_items=500, n_events=60_000, days=21)
    ds = generate(cfg.model_copy(update={"shift": ShiftConfig(at_fraction=0.7)}))
    shift = int(ds.meta["shift_ts"])
    for i, now in enumerate((shift - 2 * DAY, shift - DAY, shift + DAY, shift + 2 * DAY)):
        ref, cur = split_windows(ds.events, now_ms=now, reference_days=7, window_days=1)
        after = 0.3 if now > shift else 0.0
        check(
            settings,
            events=ds.events,
            items=ds.items,
            now_ms=now,
            outcome=outcome_counts(ref, cur),
            scores=(_scores(400, 0.0, i), _scores(400, after, 100 + i)),
            alert=False,
        )
    late = int(ds.events["ts"].max()) + 3 * DAY
    verdict = check(settings, events=ds.events, items=ds.items, now_ms=late, alert=False)
    assert verdict.status == "not judged", verdict.summary
    port = free_port()
    runner = CliRunner()
    from rtrec.app.cli import main

    get_settings.cache_clear()
    result = runner.invoke(
        main, ["monitor", "ui", "--port", str(port)], env={"RTREC_WORK_DIR": str(work)}
    )
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    _, project = ensure_project(settings)
    try:
        yield settings, f"http://127.0.0.1:{port}/projects/{project.id}", result.output
    finally:
        stack.stop_managed(settings, "evidently-ui")


def test_dashboard_project_has_its_panels(ui) -> None:
    from rtrec.monitoring import panel_titles
    from rtrec.monitoring.dashboards import PANEL_TITLES

    settings, _, output = ui
    assert panel_titles(settings) == list(PANEL_TITLES)
    assert "evidently ui pid" in output
    # Every run is recorded, the one that could not judge too.
    assert len(list(Path(str(settings.monitoring.workspace)).rglob("snapshots/*.json"))) == 5


def _panels(dom: str) -> dict[str, str]:
    """Panel title -> the rendered markup of its card (up to the next panel's title)."""
    chunks = re.split(r"<h5", dom)[1:]
    return {html.unescape(re.search(r">([^<]*)", c).group(1)): c for c in chunks}


def _y_ticks(card: str) -> list[str]:
    """The y axis's tick labels of a chart card."""
    axis = card[card.find("MuiChartsAxis-directionY") :]
    axis = axis[: axis.find("MuiChartsLegend")] if "MuiChartsLegend" in axis else axis
    return re.findall(r'class="MuiChartsAxis-tickLabel".*?<tspan[^>]*>([^<]*)</tspan>', axis)


def _chromium(url: str, profile: Path, *args: str) -> str:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
def test_ui_renders_panels_in_headless_chromium(ui, tmp_path: Path) -> None:
    from rtrec.monitoring.dashboards import PANEL_TITLES

    _, url, _ = ui
    panels = _panels(_chromium(url, tmp_path / "profile", "--dump-dom"))
    assert list(panels) == list(PANEL_TITLES), "panels missing or not rendered"
    last, rows, verdict, sizes, share, features, scores, outcome = (panels[t] for t in PANEL_TITLES)
    # The not-judged run is said in words, with its reason and its window sizes.
    assert "not judged: windows have" in html.unescape(last)
    assert "current 0 rows" in last
    assert ">reference<" in rows and ">current<" in rows  # short counter labels
    assert "evidently:metric_v2" not in rows and "column:" not in rows
    # Judged line: all five runs (the last at 0); drifted: the four judged ones.
    assert verdict.count("MuiLineElement-root") == 2
    assert verdict.count("MuiMarkElement-root") == 5 + 4
    assert sizes.count("MuiMarkElement-root") == 2 * 5
    # Drift share: value, threshold and the 0 / 1 bounds over all runs but the share
    # itself (four judged runs); the axis is the whole share range with decimal ticks.
    assert share.count("MuiLineElement-root") == 4
    assert share.count("MuiMarkElement-root") == 4 + 3 * 5
    assert _y_ticks(share) == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    # Per-column drift with each column's own threshold line (drawn for every run).
    for card, names in ((features, FEATURE_COLUMNS), (scores, SCORE_COLUMNS)):
        assert card.count("MuiLineElement-root") == 2 * len(names)
        for name in names:
            assert f">{name}<" in card and f">{name} threshold<" in card
    assert features.count("MuiMarkElement-root") == 3 * 4 + 3 * 5
    assert scores.count("MuiMarkElement-root") == 3 * 4 + 3 * 4  # the late run had none
    assert float(_y_ticks(features)[-1]) > 0.1  # scaled to the data, not one tick
    assert outcome.count("MuiMarkElement-root") == 2 * 4
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "monitoring-dashboard.png"
    _chromium(url, tmp_path / "profile", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 20_000
