"""The Evidently dashboard after real checks, served by ``rtrec monitor ui``, in Chromium.

Checks over a shifted synthetic stream (before and after the shift) fill the project;
the UI process is the one ``rtrec monitor ui`` starts; headless Chromium loads the
project page, and the rendered DOM must hold every panel title and plotted series. The
screenshot is kept under ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

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
    "--window-size=1400,2400",
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
    """Four checks recorded (two before the shift, two after), then the UI started."""
    from monitoring import check, ensure_project
    from monitoring.monitor import outcome_counts, split_windows
    from rtrec import stack
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
    port = free_port()
    runner = CliRunner()
    from rtrec.cli import main

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
    from monitoring import panel_titles
    from monitoring.dashboards import PANEL_TITLES

    settings, _, output = ui
    assert panel_titles(settings) == list(PANEL_TITLES)
    assert "evidently ui pid" in output
    assert len(list(Path(str(settings.monitoring.workspace)).rglob("snapshots/*.json"))) == 4


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
def test_ui_renders_panels_in_headless_chromium(ui, tmp_path: Path) -> None:
    from monitoring.dashboards import PANEL_TITLES

    _, url, _ = ui
    profile = [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, *profile, "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    for title in PANEL_TITLES:
        assert title in dom, f"panel {title!r} not rendered"
    # Line panels: drift share (1) + features (3) + scores (3) + outcome (1) series.
    assert dom.count("MuiLineElement-root") >= 8
    assert dom.count("MuiMarkElement-root") >= 8 * 4 - 4  # four runs' points per series
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "monitoring-dashboard.png"
    subprocess.run(
        [CHROMIUM, *FLAGS, *profile, f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shot.is_file() and shot.stat().st_size > 20_000
