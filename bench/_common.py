"""What several benchmarks share (each runs as a script with the repository on sys.path)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nothing listens on now, for a benchmark's own broker, Redis or service."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(bundle_dir: Path, key: str) -> dict[str, str]:
    """Settings of a benchmark's service: serve ``bundle_dir``, one API key, and no rate
    limit (the load generator is the one client, and its rate is what is measured)."""
    return {
        "RTREC_SERVING__BUNDLE_PATH": str(bundle_dir),
        "RTREC_SERVING__API_KEYS": f'["{key}"]',
        "RTREC_SERVING__RATE_LIMIT_PER_S": "1000000",
    }


def start_stream_processor(settings: Any, name: str) -> None:
    """``rtrec stream run`` as a managed process of the benchmark's own stack."""
    from rtrec.app.stack import start_managed

    start_managed(settings, name, [sys.executable, "-m", "rtrec.app.cli", "stream", "run"])
