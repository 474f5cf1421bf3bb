"""How one BentoML server process is started: its command line, its own environment, and
whether it may start at all on the address asked for.

Kept in the serving stage, apart from any supervisor, because two callers start servers:
the app layer (``rtrec serve``, managed by the embedded stack) and the test and bench
helper :func:`rtrec.serving.process.running_server`.

Without API keys the service answers anyone who can reach it, so it binds a loopback
address only: :func:`check_bind` refuses anything else unless ``serving.allow_anonymous``
says so. ``rtrec serve`` checks before starting BentoML, and the service checks again at
start (:func:`refuse_exposed_start`) against the socket BentoML really bound, which
covers ``bentoml serve --host 0.0.0.0`` run by hand.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from rtrec.config import ServingSettings
from rtrec.errors import ConfigError

logger = logging.getLogger(__name__)


SERVICE = "rtrec.serving.service:Recommender"

SERVICE_SETTINGS: dict = {
    "traffic": {"timeout": 10, "concurrency": 256},
    "workers": 1,
    "logging": {"access": {"enabled": False}},
    # BentoML's per-request metrics label raw paths and would repeat RouteMetrics' series;
    # this also drops its /metrics route, which RouteMetrics serves instead.
    "metrics": {"enabled": False},
}
"""The service's BentoML settings (``@bentoml.service``), shared with the serving
benchmark's floor (``bench/serving_floor.py``) so that both run the same server."""


def serve_command(host: str, port: int, target: str = SERVICE) -> list[str]:
    """``bentoml serve`` of the venv running rtrec, for the service at ``host:port``
    (``target``: another BentoML service, such as a benchmark's baseline)."""
    exe = Path(sys.executable).with_name("bentoml")
    return [
        str(exe),
        "serve",
        target,
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


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) or ``localhost``; any other name may resolve
    to an outside interface, and 0.0.0.0 / :: are every interface."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def exposure(serving: ServingSettings, host: str | None = None) -> str:
    """How the service is reachable on ``host`` (default ``serving.host``): ``keys``,
    ``loopback`` (no keys, local clients only) or ``anonymous`` (no keys on a
    non-loopback address, allowed by ``allow_anonymous``). Raises :class:`ConfigError`
    naming the fix for no keys on a non-loopback address without it."""
    host = serving.host if host is None else host
    if serving.api_keys:
        return "keys"
    if is_loopback(host):
        return "loopback"
    if serving.allow_anonymous:
        return "anonymous"
    raise ConfigError(
        f"refusing to serve on {host!r} without API keys: anyone who can reach that address "
        "could read recommendations and write feedback. Set serving.api_keys "
        "(RTREC_SERVING__API_KEYS), bind a loopback address (serving.host=127.0.0.1), or "
        "set serving.allow_anonymous=true (RTREC_SERVING__ALLOW_ANONYMOUS=true) to serve "
        "without keys on purpose"
    )


def check_bind(serving: ServingSettings, host: str | None = None) -> None:
    """Refuse (:class:`ConfigError`) before a server is started on an exposed address
    without keys; see :func:`exposure`."""
    exposure(serving, host)


def bound_host(argv: list[str] | None = None) -> str | None:
    """The address of the listening socket BentoML handed this worker (``--fd N`` on its
    command line), which is what clients really reach whatever the settings say; None
    outside a BentoML worker or for a socket without an IP address."""
    argv = sys.argv if argv is None else argv
    fd = next(
        (a.split("=", 1)[1] for a in argv if a.startswith("--fd=")),
        argv[argv.index("--fd") + 1] if "--fd" in argv[:-1] else None,
    )
    if fd is None or not fd.isdigit():
        return None
    try:
        with socket.socket(fileno=os.dup(int(fd))) as sock:  # a duplicate: BentoML's stays
            address = sock.getsockname()
    except OSError:
        return None
    return address[0] if isinstance(address, tuple) else None


def refuse_exposed_start(serving: ServingSettings) -> str:
    """At service start: :func:`exposure` of the socket really bound (else of the
    settings). On refusal it logs the reason, stops the ``bentoml serve`` that started
    this worker (else its supervisor would start the worker again and again) and raises."""
    host = bound_host() or serving.host
    try:
        return exposure(serving, host)
    except ConfigError as exc:
        logger.critical("%s", exc)
        _stop_bentoml_parent()
        raise


def _stop_bentoml_parent() -> None:
    """SIGTERM the parent when this process is a BentoML worker and the parent the circus
    arbiter of ``bentoml serve`` (which titles itself ``circusd``), and nothing else."""
    worker = Path("_bentoml_impl", "worker", "service.py").as_posix()
    if not Path(sys.argv[0]).as_posix().endswith(worker):
        return
    import psutil

    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(os.getppid())
        if parent.cmdline()[:1] == ["circusd"]:
            parent.send_signal(signal.SIGTERM)
