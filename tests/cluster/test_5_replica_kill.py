"""A serving replica killed under load: nginx routes around it, and ``up`` brings it back."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import psutil
from click.testing import CliRunner

from rtrec.app import cluster
from rtrec.app.cli import main
from rtrec.app.processes import managed_pid
from rtrec.config import Settings
from tests.cluster.support import LOAD_KEY, REPLICAS, recommend, url


class _Load(threading.Thread):
    """Sequential /recommend through nginx at ``rate``: (sent, status, replica)."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.period, self.stop = url, 1.0 / rate, threading.Event()
        self.results: list[tuple[float, int, str]] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = recommend(c, LOAD_KEY)
                    self.results.append((sent, r.status_code, r.headers.get("x-rtrec-replica", "")))
                except httpx.HTTPError as exc:
                    self.results.append((sent, -1, type(exc).__name__))
                time.sleep(max(0.0, self.period - (time.monotonic() - sent)))


def _kill_tree(pid: int) -> None:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def test_a_killed_replica_is_routed_around_and_up_restarts_it(settings: Settings) -> None:
    loads = [_Load(url(settings), rate=8) for _ in range(2)]
    for load in loads:
        load.start()
    time.sleep(3)
    _kill_tree(managed_pid(settings, "serving-1"))  # the arbiter and its worker, SIGKILL
    killed = time.monotonic()
    time.sleep(4)
    for load in loads:
        load.stop.set()
        load.join(15)
    results = sorted(r for load in loads for r in load.results)
    failed = [r for r in results if r[1] != 200]
    print(f"{len(results)} requests, failed: {failed}")
    assert len(failed) <= len(loads), failed  # at most those in flight when it died
    assert {r[2] for r in results if r[0] < killed} == REPLICAS
    after = [r for r in results if r[0] > killed + 0.1]
    assert after and {r[2] for r in after} == {"serving-2"}
    rows = {r.name: r for r in cluster.status(settings)}
    assert not rows["serving-1"].healthy and rows["nginx"].healthy

    out = CliRunner().invoke(main, ["up", "--profile", "cluster"])
    assert out.exit_code == 0, out.output
    deadline = time.monotonic() + 30  # nginx tries a failed server again after 5 s
    seen: set[str] = set()
    with httpx.Client(base_url=url(settings), timeout=10) as c:
        while seen != REPLICAS and time.monotonic() < deadline:
            seen.add(recommend(c, LOAD_KEY).headers.get("x-rtrec-replica", ""))
            time.sleep(0.2)
    assert seen == REPLICAS
