"""How one BentoML server process is started: its command line and its own environment.

Kept in the serving stage, apart from any supervisor, because two callers start servers:
the app layer (``rtrec serve``, managed by the embedded stack) and the test and bench
helper :func:`rtrec.serving.process.running_server`.
"""

from __future__ import annotations

import sys
from pathlib import Path


def serve_command(host: str, port: int) -> list[str]:
    """``bentoml serve`` of the venv running rtrec, for the service at ``host:port``."""
    exe = Path(sys.executable).with_name("bentoml")
    return [
        str(exe),
        "serve",
        "rtrec.serving.service:Recommender",
        "--host",
        host,
        "--port",
        str(port),
    ]


def serve_env(work_dir: Path | str, port: int) -> dict[str, str]:
    """Environment one server needs of its own: a BentoML home per work dir and port.

    BentoML keeps its Prometheus files under ``$BENTOML_HOME/prometheus_multiproc_dir``
    and wipes that folder whenever a server starts, so two servers sharing the default
    home (tests, benchmarks, a second ``rtrec serve``) silently erase each other's
    ``/metrics``. A home per server keeps every server's metrics its own.
    """
    home = Path(work_dir) / "serving" / f"bentoml-{port}"
    home.mkdir(parents=True, exist_ok=True)
    return {"BENTOML_HOME": str(home)}
