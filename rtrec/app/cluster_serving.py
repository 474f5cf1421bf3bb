"""Serving replicas behind nginx, for the cluster profile.

Each replica is a ``bentoml serve`` process of its own on a loopback port of
``cluster.serving.replica_ports``, named ``serving-1``, ``serving-2``, ... and told so
(``serving.replica_id``: every answer carries it in ``X-Rtrec-Replica``). nginx is the
one public port, ``serving.host``/``serving.port``, where clients already look; it
spreads requests over the replicas (least connections) and shields them:

* slow clients: ``client_header_timeout``/``client_body_timeout``/``send_timeout`` of
  ``cluster.serving.client_timeout_s`` (408, or the connection closed) instead of a
  connection held open by a trickle;
* oversized requests: ``client_max_body_size`` = ``serving.max_body_bytes``, answered
  413 by nginx with the service's JSON error body, before a replica reads a byte;
* a dead replica: a refused or broken connection, a timeout or a 502 moves the request
  to the other replica (``proxy_next_upstream``; ``/recommend`` only reads, so it is
  retried even once sent), and the dead one is skipped for a few seconds
  (``max_fails``/``fail_timeout``). With none left nginx answers 503 in the same JSON.

The config is generated into ``<work_dir>/nginx/nginx.conf`` with every path (pid, logs,
temporary files) under that folder, so nginx runs without its system installation's
directories or a service manager. The replicas see nginx as their client, so without
API keys every request shares one rate-limit bucket (nginx's address); with keys the
bucket is the key's name, the same on every replica, and ``rate_limit_backend: redis``
makes it one limit across replicas.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from rtrec.app.processes import managed_pid, start_managed, stop_managed
from rtrec.app.stack import ComponentStatus
from rtrec.config import Settings
from rtrec.errors import Unavailable

NGINX = "nginx"
REPLICA_HOST = "127.0.0.1"
REPLICA_HEADER = "X-Rtrec-Replica"


def replicas(settings: Settings) -> list[tuple[str, int]]:
    """(name, port) of each replica."""
    ports = settings.cluster.serving.replica_ports
    return [(f"serving-{i}", port) for i, port in enumerate(ports, 1)]


def nginx_binary(settings: Settings) -> str:
    configured = settings.cluster.serving.nginx
    found = [configured] if configured else [shutil.which("nginx"), "/usr/sbin/nginx"]
    for path in found:
        if path and Path(path).is_file():
            return str(path)
    raise Unavailable("nginx not found (apt-get install nginx, or set cluster.serving.nginx)")


def _get(url: str, timeout: float = 1.0) -> tuple[int, dict[str, str]] | None:
    import httpx

    try:
        resp = httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None
    return resp.status_code, dict(resp.headers)


def _live(url: str) -> bool:
    answer = _get(f"{url}/livez")
    return answer is not None and answer[0] == 200


def _start_replica(settings: Settings, name: str, port: int) -> None:
    from rtrec.serving import serve_command, serve_env

    env = {
        **serve_env(settings.work_dir, port),
        "RTREC_SERVING__HOST": REPLICA_HOST,
        "RTREC_SERVING__PORT": str(port),
        "RTREC_SERVING__REPLICA_ID": name,
    }
    start_managed(
        settings,
        name,
        serve_command(REPLICA_HOST, port),
        env=env,
        port=(REPLICA_HOST, port),
        # Live, not ready: on a fresh profile the registry has no champion yet; a replica
        # answers fallbacks until one is promoted, and nginx needs it listening.
        ready=lambda: _live(f"http://{REPLICA_HOST}:{port}"),
        timeout=settings.cluster.serving.start_timeout_s,
    )


def apply_features(settings: Settings) -> None:
    """The feature repository once, before any replica or stream processor starts: each
    would apply a missing one at start, side by side, into the same registry file."""
    from rtrec.features import apply

    if not (Path(str(settings.feast.repo_path)) / "registry.db").exists():
        apply(settings)


def start(settings: Settings) -> None:
    """The replicas side by side (each start is mostly imports), then nginx in front."""
    from rtrec.serving import check_bind

    check_bind(settings.serving)  # nginx takes the public address: the same rule applies
    exe = nginx_binary(settings)
    apply_features(settings)
    todo = replicas(settings)
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        for done in [pool.submit(_start_replica, settings, n, p) for n, p in todo]:
            done.result()
    conf = write_nginx_config(settings)
    host, port = settings.serving.host, settings.serving.port
    cmd = [exe, "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "error.log")]
    start_managed(
        settings,
        NGINX,
        [*cmd, "-g", "daemon off;"],
        port=(host, port),
        ready=lambda: _live(f"http://{host}:{port}"),
        timeout=30,
    )


def write_nginx_config(settings: Settings) -> Path:
    """``<work_dir>/nginx/nginx.conf`` from the settings (see the module docstring)."""
    from rtrec.app.cluster_nginx import nginx_config

    root = settings.work_dir / "nginx"
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    # Run as root, nginx would start its workers as `nobody`, who may not enter the work
    # dir (its temporary files live there): they run as the user who runs rtrec.
    user = None
    if os.geteuid() == 0:
        account = pwd.getpwuid(0)
        user = f"{account.pw_name} {grp.getgrgid(account.pw_gid).gr_name}"
    text = nginx_config(settings, root, [p for _, p in replicas(settings)], user=user)
    path = root / "nginx.conf"
    path.write_text(text)
    return path


def status(settings: Settings) -> list[ComponentStatus]:
    """nginx (answering through it, and which replica did), then each replica: live,
    ready, and the model version it serves."""
    host, port = settings.serving.host, settings.serving.port
    answer = _get(f"http://{host}:{port}/livez")
    ok = answer is not None and answer[0] == 200
    via = answer[1].get(REPLICA_HEADER.lower(), "?") if answer else "?"
    names = ", ".join(n for n, _ in replicas(settings))
    detail = f"balancing {names}; /livez answered by {via}" if ok else "not answering"
    rows = [ComponentStatus(NGINX, f"{host}:{port}", ok, detail, _managed(settings, NGINX))]
    for name, replica_port in replicas(settings):
        rows.append(_replica_status(settings, name, replica_port))
    return rows


def _replica_status(settings: Settings, name: str, port: int) -> ComponentStatus:
    url = f"http://{REPLICA_HOST}:{port}"
    live = _live(url)
    ready = _get(f"{url}/readyz")
    detail = "not answering"
    if live:
        detail = "live, " + ("ready" if ready and ready[0] == 200 else "not ready (no champion)")
    return ComponentStatus(name, f"{REPLICA_HOST}:{port}", live, detail, _managed(settings, name))


def _managed(settings: Settings, name: str) -> bool:
    return managed_pid(settings, name) is not None


def stop(settings: Settings) -> list[str]:
    """nginx first (no new requests reach a stopping replica), then the replicas and
    any BentoML worker that outlived its arbiter (they run in sessions of their own,
    out of reach of the process-group signal)."""
    stopped = [NGINX] if stop_managed(settings, NGINX) else []
    for name, _ in replicas(settings):
        pid = managed_pid(settings, name)
        children = []
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(pid).children(recursive=True)
        if stop_managed(settings, name):
            stopped.append(name)
        _, left = psutil.wait_procs(children, timeout=5)
        for child in left:
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGKILL)
    return stopped
