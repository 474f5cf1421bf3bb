"""Stream processor replicas for the cluster profile.

One ``rtrec stream run --metrics-port P`` per port of ``cluster.stream.metrics_ports``,
each a process of its own named ``stream-processor-1``, ``-2``, ... and all members of
the consumer group ``kafka.consumer_group``: the broker shares the events topic's
partitions between them, and when one stops (or dies) the group hands its partitions to
the others, whose per-partition applied offsets in Redis make the redelivery harmless.
They write into the profile's Redis Cluster like every other client
(:mod:`rtrec.redis_clients`). Ready once its metrics endpoint answers; stopped with
SIGTERM, on which a processor finishes its batch and leaves the group.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

from rtrec.app.processes import managed_pid, start_managed, stop_managed
from rtrec.app.stack import ComponentStatus
from rtrec.config import Settings

HOST = "127.0.0.1"


def processors(settings: Settings) -> list[tuple[str, int]]:
    """(name, metrics port) of each processor."""
    ports = settings.cluster.stream.metrics_ports
    return [(f"stream-processor-{i}", port) for i, port in enumerate(ports, 1)]


def metrics_text(port: int) -> str | None:
    import httpx

    try:
        resp = httpx.get(f"http://{HOST}:{port}/metrics", timeout=1.0)
    except httpx.HTTPError:
        return None
    return resp.text if resp.status_code == 200 else None


def applied(text: str) -> int:
    """Events a processor applied, from its ``rtrec_stream_events_total``."""
    name = 'rtrec_stream_events_total{outcome="applied"}'
    return int(sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)))


def _start_one(settings: Settings, name: str, port: int) -> None:
    cmd = [sys.executable, "-m", "rtrec.app.cli", "stream", "run", "--metrics-port", str(port)]
    start_managed(
        settings,
        name,
        cmd,
        port=(HOST, port),
        ready=lambda: metrics_text(port) is not None,
        timeout=settings.cluster.stream.start_timeout_s,
    )


def start(settings: Settings) -> None:
    """Every processor not running, side by side (each start is mostly imports)."""
    todo = processors(settings)
    if not todo:
        return
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        for done in [pool.submit(_start_one, settings, n, p) for n, p in todo]:
            done.result()


def status(settings: Settings) -> list[ComponentStatus]:
    rows = []
    for name, port in processors(settings):
        text = metrics_text(port)
        detail = "metrics not answering" if text is None else f"applied {applied(text)} events"
        if text is not None:
            detail += f" (group {settings.kafka.consumer_group})"
        managed = managed_pid(settings, name) is not None
        rows.append(ComponentStatus(name, f"{HOST}:{port}", text is not None, detail, managed))
    return rows


def stop(settings: Settings) -> list[str]:
    return [name for name, _ in processors(settings) if stop_managed(settings, name, timeout=30)]
