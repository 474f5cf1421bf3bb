"""What several benchmarks share (each runs as a script with the repository on sys.path)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nothing listens on now, for a benchmark's own broker, Redis or service."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose Redis Cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def service_env(bundle_dir: Path, key: str) -> dict[str, str]:
    """Settings of a benchmark's service: serve ``bundle_dir``, one API key, and no rate
    limit (the load generator is the one client, and its rate is what is measured)."""
    return {
        "RTREC_SERVING__BUNDLE_PATH": str(bundle_dir),
        "RTREC_SERVING__API_KEYS": api_keys_json(key),
        "RTREC_SERVING__RATE_LIMIT_PER_S": "1000000",
    }


def api_keys_json(key: str) -> str:
    """``serving.api_keys`` holding ``key`` with every scope the settings know (the
    benchmark calls /recommend, /similar, /feedback and /status); a bare key where the
    settings have no scopes."""
    import json

    from rtrec import config

    scopes = getattr(config, "SCOPES", None)
    if scopes is None:
        return json.dumps([key])
    return json.dumps([{"name": "bench", "key": key, "scopes": list(scopes)}])


def start_stream_processor(settings: Any, name: str) -> None:
    """``rtrec stream run`` as a managed process of the benchmark's own stack."""
    from rtrec.app.stack import start_managed

    start_managed(settings, name, [sys.executable, "-m", "rtrec.app.cli", "stream", "run"])


def fresh_stack_settings(work: Path) -> Any:
    """Settings for an embedded stack of this run's own: an emptied work dir and free
    ports, exported as RTREC_* so the processes the bench starts see them too.

    Fresh every run: the embedded broker keeps no data, so consumer offsets kept in an
    old Redis would point past the new topic's end and the processor would skip events.
    """
    from rtrec.config import get_settings

    shutil.rmtree(work, ignore_errors=True)
    os.environ.update(
        {
            "RTREC_WORK_DIR": str(work),
            "RTREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "RTREC_KAFKA__SESSION_TIMEOUT_MS": "2000",
            "RTREC_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0",
        }
    )
    get_settings.cache_clear()
    return get_settings()


def seed_histories(settings: Any, histories: Mapping[str, Sequence[str]], *, seed: int = 3) -> None:
    """Write each user's ``recent_items`` (and random event counts) to the online store,
    as the stream processor would have: the service reads them like any user's."""
    import numpy as np
    import pandas as pd
    from rtrec.features import count_names, write_user_features

    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    rows = [
        {"user_id": u, "recent_items": list(h), "last_event_ms": now - 60_000, "written_ms": now}
        | {c: int(rng.integers(0, 20)) for c in count_names()}
        for u, h in histories.items()
    ]
    frame = pd.DataFrame(rows)
    frame["event_timestamp"] = pd.to_datetime(frame["last_event_ms"], unit="ms", utc=True)
    for start in range(0, len(frame), 1000):
        write_user_features(settings, frame.iloc[start : start + 1000])
