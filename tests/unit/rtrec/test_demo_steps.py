"""The demo's step bookkeeping: a promised step that did not happen is visible, with its
reason, and makes the run fail; a refused model is an outcome."""

from __future__ import annotations

import numpy as np
import pytest

from rtrec.app.demo.model_steps import in_windows
from rtrec.app.demo.runner import DemoReport, Missed, fail_on_missed

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
    assert in_windows(ts, now, 7.0, 1.0) == [2, 2]


def test_the_demo_exits_non_zero_when_a_promised_step_did_not_happen() -> None:
    import click

    report = DemoReport()
    report.step("swap", lambda: {"status": "not promoted", "reason": "gate said no"})
    fail_on_missed(report)  # a refused model is no failure
    report.step("retrain", lambda: (_ for _ in ()).throw(Missed("not triggered: no drift")))
    with pytest.raises(click.ClickException, match="retrain: skipped: not triggered: no drift"):
        fail_on_missed(report)


def test_quick_caps_training_epochs_unless_epochs_is_given() -> None:
    from rtrec.app.demo.command import QUICK_MAX_EPOCHS, training_epochs

    assert QUICK_MAX_EPOCHS == 10
    assert training_epochs(quick=True, epochs=None) == QUICK_MAX_EPOCHS
    assert training_epochs(quick=True, epochs=40) == 40  # --epochs overrides the cap
    assert training_epochs(quick=False, epochs=None) is None  # each preset's own schedule
    assert training_epochs(quick=False, epochs=3) == 3


def test_steps_run_in_order_on_the_context_and_an_error_stops_the_run() -> None:
    from rtrec.app.demo.runner import run_steps

    seen: list[str] = []

    def ok(ctx: list[str]) -> dict[str, int]:
        ctx.append("ok")
        return {"n": len(ctx)}

    def missed(ctx: list[str]) -> None:
        ctx.append("missed")
        raise Missed("not triggered: no drift")

    def broken(ctx: list[str]) -> None:
        raise RuntimeError("the broker is down")

    report = DemoReport()
    with pytest.raises(RuntimeError, match="the broker is down"):
        run_steps(report, seen, [("a", ok), ("b", missed), ("c", broken), ("d", ok)])
    assert seen == ["ok", "missed"]  # "d" never ran
    assert [s["step"] for s in report.steps] == ["a", "b"]
    assert report.steps[0]["n"] == 1 and report.missed == ["b: skipped: not triggered: no drift"]
    assert len(report.offsets) == 3  # "c" started, then failed


def test_incomplete_drift_windows_are_a_missed_step_with_both_reasons() -> None:
    from types import SimpleNamespace

    from rtrec.app.demo.model_steps import _require_whole_windows

    ctx = SimpleNamespace(no_retrain=None)
    verdict = {"judged": True, "reference_rows": 90, "current_rows": 10}
    out = {"status": "done", "reason": "drift in 3 of 5 features", "drifted": True}
    with pytest.raises(Missed) as caught:
        _require_whole_windows(ctx, verdict, [100, 10], out)
    assert caught.value.status == "incomplete"
    assert caught.value.reason.startswith("the drift check judged 90 + 10 events")
    assert caught.value.details == {"drifted": True, "verdict_reason": "drift in 3 of 5 features"}


def test_an_unhealthy_stack_after_start_is_named_and_warned(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from rtrec.app import stack
    from rtrec.app.demo import steps
    from rtrec.app.stack import ComponentStatus

    answers = [
        ComponentStatus("kafka", "127.0.0.1:1", False, "topics missing: ['events']"),
        ComponentStatus("redis", "redis://127.0.0.1:2/0", True, "0 keys"),
    ]
    monkeypatch.setattr(stack, "up", lambda settings: answers)
    ctx = SimpleNamespace(settings=None)
    with caplog.at_level("WARNING", logger=steps.__name__):
        out = steps.stack_up(ctx)  # type: ignore[arg-type]
    assert out == {"healthy": False, "unhealthy": "kafka: topics missing: ['events']"}
    assert "not healthy right after its start: kafka" in caplog.text
    answers[0] = ComponentStatus("kafka", "127.0.0.1:1", True, "4 topics")
    assert steps.stack_up(ctx) == {"healthy": True}  # type: ignore[arg-type]


def test_a_work_dir_holding_an_earlier_runs_events_is_refused_before_anything_starts(
    tmp_path, monkeypatch: pytest.MonkeyPatch, clean_rtrec_env: None
) -> None:
    from click.testing import CliRunner

    from rtrec.app.cli import main
    from rtrec.app.demo.command import earlier_run
    from rtrec.config import get_settings, load_settings

    work = tmp_path / "w"
    assert earlier_run(load_settings(work_dir=work)) is None  # a fresh work dir
    (work / "offline" / "events").mkdir(parents=True)
    assert earlier_run(load_settings(work_dir=work)) is None  # directories, no events yet
    (work / "offline" / "events" / "part-1-abc.parquet").write_bytes(b"PAR1")
    monkeypatch.setenv("RTREC_WORK_DIR", str(work))
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(main, ["demo", "--quick"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 2, out.output
    assert f"{work} already holds an earlier run's offline event log (1 files" in out.output
    assert f"rtrec down && rm -rf {work}" in out.output and "RTREC_WORK_DIR=" in out.output
    assert not (work / "run").exists()  # nothing was started: no pid file, no directory
