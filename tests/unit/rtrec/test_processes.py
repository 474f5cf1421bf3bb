"""``rtrec down`` signals only the processes it recorded: a pid file whose pid now belongs
to another process (another start time, executable or, in an older pid file, command line)
is removed, never acted on; a process that retitled itself is still stopped."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rtrec.app.processes import managed_pid, same_process, start_managed, stop_managed
from rtrec.config import Settings, load_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(work_dir=tmp_path)


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process this work dir did not start."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _record(settings: Settings, name: str, info: dict) -> Path:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    path = settings.run_dir / f"{name}.json"
    path.write_text(json.dumps(info))
    return path


@pytest.mark.parametrize(
    "recorded",
    [
        {"cmd": ["/usr/bin/redis-server", "--port", "1"], "started_offset": -100.0},
        {"cmd": ["sleep", "60"], "started_offset": -100.0},  # same program, reused pid
        {"cmd": ["sleep", "60"], "started_offset": 0.0, "exe": "/usr/bin/redis-server"},
        {"cmd": ["/usr/bin/redis-server", "--port", "1"], "started_offset": None},  # old file
    ],
)
def test_a_pid_now_owned_by_another_process_is_not_signalled(
    settings: Settings,
    stranger: subprocess.Popen[bytes],
    recorded: dict,
    caplog: pytest.LogCaptureFixture,
) -> None:
    info = {"pid": stranger.pid, "cmd": recorded["cmd"], "stop_signal": 15}
    if recorded["started_offset"] is not None:
        started = psutil.Process(stranger.pid).create_time()
        info["create_time"] = started + recorded["started_offset"]
    if "exe" in recorded:
        info["exe"] = recorded["exe"]
    path = _record(settings, "redis", info)
    assert same_process(info) is not None
    assert managed_pid(settings, "redis") is None  # not reported as ours either
    with caplog.at_level(logging.WARNING, logger="rtrec.app.processes"):
        assert stop_managed(settings, "redis", timeout=1) is False
    assert stranger.poll() is None and psutil.Process(stranger.pid).is_running()
    assert not path.exists()  # the stale record is gone
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning and "not stopping redis" in warning[0].getMessage()


def test_a_process_started_here_is_recorded_with_its_start_time_and_stopped(
    settings: Settings,
) -> None:
    pid = start_managed(settings, "sleeper", ["sleep", "60"], ready=lambda: True)
    info = json.loads((settings.run_dir / "sleeper.json").read_text())
    assert info["pid"] == pid
    assert info["create_time"] == pytest.approx(psutil.Process(pid).create_time(), abs=0.01)
    assert info["exe"] == psutil.Process(pid).exe()  # the program itself, not a shell
    assert same_process(info) is None and managed_pid(settings, "sleeper") == pid
    assert stop_managed(settings, "sleeper", timeout=5) is True
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (settings.run_dir / "sleeper.json").exists()


def test_an_old_pid_file_older_than_the_process_now_on_its_pid_is_stale(
    settings: Settings, stranger: subprocess.Popen[bytes]
) -> None:
    """Without a recorded start time, a process that started after the file was written
    cannot be the one recorded, even running the same program."""
    path = _record(settings, "old", {"pid": stranger.pid, "cmd": ["sleep", "60"]})
    written = psutil.Process(stranger.pid).create_time() - 60
    os.utime(path, (written, written))
    assert stop_managed(settings, "old", timeout=1) is False
    assert stranger.poll() is None and not path.exists()


def test_a_pid_file_from_before_start_times_were_recorded_still_stops_its_process(
    settings: Settings,
) -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        _record(settings, "legacy", {"pid": proc.pid, "cmd": ["sleep", "60"], "stop_signal": 15})
        assert stop_managed(settings, "legacy", timeout=5) is True
        assert proc.wait(timeout=5) is not None
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_rewrites_its_title_is_still_recognised(settings: Settings) -> None:
    """``bentoml serve`` becomes ``circusd``: start time and executable still match."""
    code = "import setproctitle, time; setproctitle.setproctitle('circusd'); time.sleep(60)"
    pid = start_managed(settings, "titled", [sys.executable, "-c", code], ready=lambda: True)
    deadline = time.monotonic() + 10
    while psutil.Process(pid).cmdline()[:1] != ["circusd"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert psutil.Process(pid).cmdline()[:1] == ["circusd"]
    assert managed_pid(settings, "titled") == pid
    assert stop_managed(settings, "titled", timeout=5) is True


def test_a_launcher_that_execs_its_program_is_recorded_as_that_program(
    settings: Settings,
) -> None:
    """``spark-class`` execs ``java`` after the pid file is written: the record follows
    the exec once the process is ready, so ``down`` still recognises and stops it."""
    program = psutil.Process(os.getpid()).exe()  # any program but the shell will do
    script = f"sleep 0.3; exec {program} -c 'import time; time.sleep(60)'"

    def execed() -> bool:
        pid = json.loads((settings.run_dir / "launcher.json").read_text())["pid"]
        return psutil.Process(pid).exe() == program

    pid = start_managed(settings, "launcher", ["/bin/sh", "-c", script], ready=execed)
    info = json.loads((settings.run_dir / "launcher.json").read_text())
    assert info["exe"] == program and "written" not in info
    assert managed_pid(settings, "launcher") == pid
    assert stop_managed(settings, "launcher", timeout=5) is True
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# A leader that waits for its child; the child records a SIGTERM it receives.
_FAMILY = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import signal, sys, time
def term(*_):
    open(sys.argv[1], "w").write("term")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(sys.argv[1] + ".up", "w").write("up")
time.sleep(60)
''', sys.argv[1]])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
child.wait()
"""


@pytest.mark.parametrize("leader_only", [False, True])
def test_the_stop_signal_reaches_the_group_or_the_leader_alone(
    settings: Settings, tmp_path: Path, leader_only: bool
) -> None:
    """``signal_leader_only``: the child (a scheduler's running task) is not sent the stop
    signal; it is SIGKILLed only as a straggler once the leader has gone."""
    mark = tmp_path / "child"
    start_managed(
        settings,
        "family",
        [sys.executable, "-c", _FAMILY, str(mark)],
        ready=lambda: Path(f"{mark}.up").exists(),
        timeout=20,
        signal_leader_only=leader_only,
    )
    assert stop_managed(settings, "family", timeout=5) is True
    time.sleep(0.2)
    assert mark.exists() is not leader_only
