"""Processes the embedded stack starts and stops: what ``rtrec up`` records and ``down`` ends.

Every process is started in its own process group and recorded in
``<work_dir>/run/<name>.json`` (pid, command, start time, executable, stop signal), so a
later command, in another interpreter, stops exactly what this work dir started and nothing
else: a pid whose process now has another start time or executable (the machine rebooted,
the pid was reused) is never signalled. A port is probed with a plain TCP connect: readiness is
what a client would see.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from rtrec.config import Settings
from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.json"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which still answers ``kill(pid, 0)``, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def _read(path: Path) -> dict[str, Any] | None:
    """The pid file's record, with ``written``: when the file was written."""
    try:
        info = json.loads(path.read_text())
        info["pid"] = int(info["pid"])
        info["written"] = path.stat().st_mtime
    except (ValueError, KeyError, TypeError, OSError):
        return None
    return info if isinstance(info, dict) else None


def same_process(info: dict[str, Any]) -> str | None:
    """None when the running ``info["pid"]`` is the process recorded in ``info``, else
    why not: another start time (psutil's ``create_time``, recorded at start: a reused
    pid) or another program (the executable file, recorded too). Not the command line
    as shown, which some programs rewrite (``bentoml serve`` shows ``circusd``,
    redis-server ``redis-server host:port``); that, by the program's name, and a start
    no later than the file's are what a pid file from before start times were recorded
    is checked against."""
    try:
        proc = psutil.Process(info["pid"])
        started, exe = proc.create_time(), _exe(proc)
        cmdline, name = proc.cmdline(), proc.name()
    except psutil.NoSuchProcess:
        return "it is not running"
    except psutil.Error as exc:  # AccessDenied: another user's process, so not ours
        return f"it cannot be inspected ({type(exc).__name__})"
    if info.get("create_time") is not None:
        recorded = float(info["create_time"])
        if abs(started - recorded) > 0.01:
            return f"it started at {started:.2f}, not at the recorded {recorded:.2f}"
        if info.get("exe") and exe != info["exe"]:
            return f"it runs {exe}, not the recorded {info['exe']}"
        return None
    if info.get("written") is not None and started > float(info["written"]) + 1.0:
        return "it started after its pid file was written"
    program = Path(str((info.get("cmd") or [""])[0])).name
    if program and program != name and program not in " ".join(cmdline):
        return f"its command line {cmdline[:3]} is not the recorded {program!r}"
    return None


def _exe(proc: psutil.Process) -> str:
    """The executable file, also after a package upgrade replaced it on disk."""
    return proc.exe().removesuffix(" (deleted)")


def managed_pid(settings: Settings, name: str) -> int | None:
    """Pid of a process this work dir started under ``name``, if it is still running (and
    still that process, not another one that got its pid)."""
    info = _read(_pid_file(settings, name))
    if info is None or not alive(info["pid"]):
        return None
    return info["pid"] if same_process(info) is None else None


def managed_names(settings: Settings) -> list[str]:
    """Names of every process this work dir recorded (running or not)."""
    if not settings.run_dir.is_dir():
        return []
    return sorted(p.stem for p in settings.run_dir.glob("*.json"))


def start_managed(
    settings: Settings,
    name: str,
    cmd: Sequence[str],
    *,
    port: tuple[str, int] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    ready: Callable[[], bool] | None = None,
    timeout: float = 30.0,
    stop_signal: int = signal.SIGTERM,
    user: str | None = None,
    signal_leader_only: bool = False,
) -> int:
    """Start ``cmd`` in its own process group, record it, and wait until it is ready.

    Harmless when already running under this work dir; raises :class:`Unavailable`
    naming the port when something else holds it. ``user``: run it as that account
    (for a server that refuses to run as root). ``signal_leader_only``: the stop signal
    goes to the leader alone and the group is SIGKILLed only after the timeout (systemd's
    ``KillMode=mixed``), for a server that shuts its own children down gracefully.
    """
    pid = managed_pid(settings, name)
    if pid is not None:
        return pid
    if port is not None and port_open(*port):
        raise Unavailable(
            f"port {port[1]} on {port[0]} is already in use by another process; "
            f"{name} cannot start there (stop that process or change the setting)"
        )
    proc = _spawn(settings, name, cmd, env=env, cwd=cwd, stop_signal=stop_signal, user=user)
    if signal_leader_only:
        _mark_leader_only(settings, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _pid_file(settings, name).unlink(missing_ok=True)
            tail = (settings.log_dir / f"{name}.log").read_text(errors="replace")[-800:]
            raise Unavailable(f"{name} exited with code {proc.returncode} at start:\n{tail}")
        ok = ready() if ready is not None else (port is None or port_open(*port))
        if ok:
            _record_exe(settings, name, proc.pid)
            logger.info("started %s", name, extra={"pid": proc.pid})
            return proc.pid
        time.sleep(0.05)
    _record_exe(settings, name, proc.pid)  # still our child: stop it even if it exec'd
    stop_managed(settings, name)
    raise Unavailable(f"{name} did not become ready within {timeout:.0f} s")


def _mark_leader_only(settings: Settings, name: str) -> None:
    """Record in ``name``'s pid file that its stop signal goes to the leader alone."""
    path = _pid_file(settings, name)
    info = _read(path)
    if info is not None:
        path.write_text(json.dumps({**info, "signal_leader_only": True}))


def _spawn(
    settings: Settings,
    name: str,
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None,
    cwd: Path | None,
    stop_signal: int,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (output to ``<log_dir>/<name>.log``) and record it in its pid file."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log = (settings.log_dir / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        list(cmd),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,
        user=user,
        group=pwd.getpwnam(user).pw_gid if user is not None else None,
    )
    log.close()
    info: dict[str, Any] = {"pid": proc.pid, "cmd": list(cmd), "stop_signal": int(stop_signal)}
    with contextlib.suppress(psutil.Error):  # gone already: start_managed reports the exit
        started = psutil.Process(proc.pid)  # exec'd: Popen returns after the exec succeeded
        info.update(create_time=started.create_time(), exe=_exe(started))
    _pid_file(settings, name).write_text(json.dumps(info))
    return proc


def _record_exe(settings: Settings, name: str, pid: int) -> None:
    """Record the executable again once the process is ready: a launcher script that
    execs its program (``spark-class`` execs ``java``) has changed it since the pid file
    was written, and the pid is still this process's unreaped child, so nobody else's."""
    path = _pid_file(settings, name)
    info = _read(path)
    if info is None or info.get("exe") is None:
        return
    with contextlib.suppress(psutil.Error):
        info["exe"] = _exe(psutil.Process(pid))
        info.pop("written", None)
        path.write_text(json.dumps(info))


def stop_managed(settings: Settings, name: str, *, timeout: float = 15.0) -> bool:
    """Stop a recorded process group (its own stop signal, then SIGKILL). True if one ran."""
    path = _pid_file(settings, name)
    if not path.exists():
        return False
    info = _read(path)
    if info is None:
        path.unlink(missing_ok=True)
        return False
    pid, sig = info["pid"], int(info.get("stop_signal", signal.SIGTERM))
    was_running = alive(pid)
    stranger = same_process(info) if was_running else None
    if stranger is not None:
        logger.warning(
            "not stopping %s: pid %d is another process now (%s); removed its stale pid file",
            name,
            pid,
            stranger,
            extra={"pid": pid, "pid_file": str(path)},
        )
        path.unlink(missing_ok=True)
        return False
    if was_running:
        with contextlib.suppress(ProcessLookupError):
            (os.kill if info.get("signal_leader_only") else os.killpg)(pid, sig)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # stragglers in the group, or the leader if stuck
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    path.unlink(missing_ok=True)
    return was_running
