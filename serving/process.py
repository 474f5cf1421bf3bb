"""Run the service as a subprocess on a given port: for tests, benchmarks and soak runs.

``rtrec serve --detach`` tracks one service per work dir under the name ``serving``; tests
and benchmarks need several at once with different settings, so they use
:func:`running_server`, which starts ``bentoml serve`` in its own process group with
``RTREC_*`` overrides, waits for ``/readyz`` and always stops it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rtrec.serving.launch import SERVICE, serve_command, serve_env

from rtrec.errors import Unavailable

logger = logging.getLogger(__name__)


@dataclass
class Server:
    """A started service: its base URL, process and log file."""

    url: str
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def pid(self) -> int:
        return self.proc.pid


def wait_ready(url: str, *, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``/readyz`` until 200; raise Unavailable naming the URL if it never comes."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Unavailable(f"service for {url} exited with code {proc.returncode} at start")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise Unavailable(f"service at {url} was not ready within {timeout:.0f} s")


def stop(proc: subprocess.Popen, *, timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it.

    BentoML's workers run in sessions of their own (circus), so the group signal does not
    reach them: their pids are collected first and any survivor is killed too.
    """
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _work_dir(env: dict[str, str]) -> Path:
    """The work dir the server will use (its settings read the same environment)."""
    if env.get("RTREC_WORK_DIR"):
        return Path(env["RTREC_WORK_DIR"])
    from rtrec.config import Settings

    return Settings.model_fields["work_dir"].get_default(call_default_factory=True)


@contextlib.contextmanager
def running_server(
    port: int,
    *,
    env: dict[str, str] | None = None,
    log: Path,
    host: str = "127.0.0.1",
    timeout: float = 90.0,
    wait: bool = True,
    target: str = SERVICE,
) -> Iterator[Server]:
    """Start the service (or another BentoML service, ``target``) on ``host:port`` with
    ``env`` added to this process's environment."""
    full = {**os.environ, **(env or {}), "RTREC_SERVING__HOST": host}
    full["RTREC_SERVING__PORT"] = str(port)
    if "BENTOML_HOME" not in (env or {}):
        full.update(serve_env(_work_dir(full), port))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            serve_command(host, port, target),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full,
            start_new_session=True,
        )
    server = Server(f"http://{host}:{port}", proc, log)
    try:
        if wait:
            try:
                wait_ready(server.url, timeout=timeout, proc=proc)
            except Unavailable as exc:
                raise Unavailable(f"{exc}; log tail:\n{server.log_text()[-1500:]}") from None
        yield server
    finally:
        stop(proc)
