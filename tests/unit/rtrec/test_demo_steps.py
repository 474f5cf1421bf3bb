"""The demo's step bookkeeping: a promised step that did not happen is visible, with its
reason, and makes the run fail; a refused model is an outcome."""

from __future__ import annotations

import numpy as np
import pytest

from rtrec.app.demo import DemoReport, Missed, _in_windows

DAY = 86_400_000


def test_a_missed_step_is_recorded_with_its_reason_and_no_duration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = DemoReport()
    report.step("done", lambda: {"n": 3})
    report.step("drift", lambda: (_ for _ in ()).throw(Missed("not judged: tiny", rows=[5, 0])))
    report.step("swap", lambda: {"status": "not promoted", "reason": "gate said no"})
    done, drift, swap = report.steps
    assert done["status"] == "done" and done["seconds"] is not None and done["n"] == 3
    assert drift == {
        "step": "drift",
        "status": "skipped",
        "seconds": None,
        "reason": "not judged: tiny",
        "missed": True,
        "rows": [5, 0],
    }
    assert swap["status"] == "not promoted" and swap["seconds"] is None
    assert swap["reason"] == "gate said no" and "missed" not in swap
    assert report.missed == ["drift: skipped: not judged: tiny"]
    err = capsys.readouterr().err
    assert "skipped: not judged: tiny" in err and "not promoted" in err


def test_window_counts_use_the_monitors_bounds() -> None:
    now = 100 * DAY
    ts = np.array([now - 8 * DAY - 1, now - 8 * DAY, now - DAY - 1, now - DAY, now - 1, now])
    assert _in_windows(ts, now, 7.0, 1.0) == [2, 2]


def test_the_demo_exits_non_zero_when_a_promised_step_did_not_happen() -> None:
    import click

    from rtrec.app.demo import _fail_on_missed

    report = DemoReport()
    report.step("swap", lambda: {"status": "not promoted", "reason": "gate said no"})
    _fail_on_missed(report)  # a refused model is no failure
    report.step("retrain", lambda: (_ for _ in ()).throw(Missed("not triggered: no drift")))
    with pytest.raises(click.ClickException, match="retrain: skipped: not triggered: no drift"):
        _fail_on_missed(report)
