"""A Redis Cluster for the cluster profile: three (``cluster.redis.ports``) masters, no
replicas, with a password.

Each node is a ``redis-server`` in cluster mode started from its own generated config
file, ``<work_dir>/redis-cluster/<port>/redis.conf`` (0600), which holds ``requirepass``
and ``masterauth``: the password never appears on a command line or in a pid file.
It is ``redis.password`` or, unset, one generated into ``<work_dir>/secrets/
redis_password`` (0600), which every client of the work dir reads
(:mod:`rtrec.redis_clients`). On the first start the empty nodes are joined with
``redis-cli --cluster create`` (the password in ``REDISCLI_AUTH``, its environment);
later starts find the layout in each node's ``nodes.conf`` and only wait until all
16384 slots are served again. Each node keeps an append-only file, so a restarted node
comes back with its keys (the embedded Redis does the same).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from rtrec.app.processes import managed_pid, start_managed, stop_managed
from rtrec.app.stack import ComponentStatus
from rtrec.config import Settings
from rtrec.errors import ConfigError, Unavailable
from rtrec.redis_clients import PASSWORD_FILE, local_cluster, password

SLOTS = 16384


def node_name(index: int) -> str:
    return f"redis-node-{index}"


def _nodes(settings: Settings) -> list[tuple[str, str, int]]:
    """(name, host, port) of each node the profile runs."""
    host = settings.redis.host_port[0]
    return [(node_name(i), host, p) for i, p in enumerate(settings.cluster.redis.ports, 1)]


def ensure_password(settings: Settings) -> str:
    """``redis.password``, else the work dir's generated one, created on first use (an
    atomic hard link: a password another ``up`` wrote first wins)."""
    path = settings.work_dir / PASSWORD_FILE
    if settings.redis.password is None and not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is cut by the umask, never widened
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    secret = password(settings)
    if secret is None:
        raise ConfigError("redis.url carries the password: set redis.password instead")
    return secret


def _write_config(settings: Settings, host: str, port: int, secret: str) -> Path:
    """The node's redis.conf (owner-only: it holds the password)."""
    data = settings.work_dir / "redis-cluster" / str(port)
    data.mkdir(parents=True, exist_ok=True)
    quoted = '"' + secret.replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = [
        f"port {port}",
        f"bind {host}",
        f"dir {data}",
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        "cluster-node-timeout 5000",
        # The nodes have no replicas: with Redis's default (yes) one failed node would stop
        # the whole cluster (CLUSTERDOWN for every key); with no, the others keep serving
        # their slots and only the failed node's keys are unavailable until it returns.
        "cluster-require-full-coverage no",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        "protected-mode no",
        "daemonize no",
        f"requirepass {quoted}",
        f"masterauth {quoted}",
    ]
    path = data / "redis.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC
    return path


def _node(host: str, port: int, secret: str, timeout: float = 1.0) -> Any:
    """A plain client of one node (cluster commands ask that node, not the cluster)."""
    import redis

    return redis.Redis(
        host=host,
        port=port,
        password=secret,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


def _answers(host: str, port: int, secret: str) -> bool:
    try:
        with _node(host, port, secret) as client:
            return bool(client.ping())
    except Exception:  # not up yet (refused, loading): keep waiting
        return False


def start(settings: Settings) -> None:
    """Start every node that is not running, then join them (first start) or wait for
    the cluster to serve every slot again (idempotent)."""
    if not local_cluster(settings):
        return
    conf, url_port = settings.cluster.redis, settings.redis.host_port[1]
    if url_port not in conf.ports:
        raise ConfigError(f"redis.url's port {url_port} is not one of cluster.redis.ports")
    exe = shutil.which("redis-server")
    if exe is None:
        raise Unavailable("redis-server is not on PATH (apt-get install redis-server)")
    secret = ensure_password(settings)
    for name, node_host, port in _nodes(settings):
        path = _write_config(settings, node_host, port, secret)
        start_managed(
            settings,
            name,
            [exe, str(path)],
            port=(node_host, port),
            ready=lambda h=node_host, p=port: _answers(h, p, secret),
            timeout=conf.start_timeout_s,
        )
    if _assigned(settings, secret) == 0:
        _create(settings, secret)
    _wait_served(settings, secret, conf.start_timeout_s)


def _assigned(settings: Settings, secret: str) -> int:
    """Slots any node has assigned (0: a fresh set of nodes, never joined)."""
    most = 0
    for _, host, port in _nodes(settings):
        with _node(host, port, secret) as client:
            most = max(most, int(client.cluster("info")["cluster_slots_assigned"]))
    return most


def _create(settings: Settings, secret: str) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise Unavailable("redis-cli is not on PATH (apt-get install redis-tools)")
    cmd = [cli, "--cluster", "create", *[f"{h}:{p}" for _, h, p in _nodes(settings)]]
    cmd += ["--cluster-replicas", "0", "--cluster-yes"]
    out = subprocess.run(
        cmd,
        env={**os.environ, "REDISCLI_AUTH": secret},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        raise Unavailable(f"redis-cli --cluster create failed: {(out.stdout + out.stderr)[-800:]}")


def _wait_served(settings: Settings, secret: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        view = cluster_view(settings, secret)
        if view["state"] == "ok" and view["covered"] == SLOTS:
            return
        if time.monotonic() > deadline:
            raise Unavailable(f"Redis Cluster not serving every slot after {timeout:g} s: {view}")
        time.sleep(0.1)


def cluster_view(settings: Settings, secret: str | None = None) -> dict[str, Any]:
    """What the first answering node knows: state, slots covered, and each node's
    address, role, link and slot ranges (from ``CLUSTER NODES``), plus its key count."""
    secret = password(settings) if secret is None else secret
    host, port = settings.redis.host_port
    candidates = [(host, port)] + [(h, p) for _, h, p in _nodes(settings) if p != port]
    last: Exception | None = None
    for h, p in candidates if local_cluster(settings) else [(host, port)]:
        try:
            with _node(h, p, secret or None) as client:
                info = client.cluster("info")
                nodes = client.cluster("nodes")
        except Exception as exc:  # that node is down: ask the next one
            last = exc
            continue
        rows = _parse_nodes(nodes)
        return {
            "state": info["cluster_state"],
            "covered": int(info["cluster_slots_ok"]),
            "nodes": rows,
            "asked": f"{h}:{p}",
        }
    return {"state": "unreachable", "covered": 0, "nodes": [], "error": str(last)}


def _parse_nodes(nodes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """redis-py's parsed ``CLUSTER NODES`` as rows: address, role, link, slot ranges."""
    rows = []
    for address, node in nodes.items():
        ranges = [f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in node.get("slots", [])]
        count = sum(int(hi) - int(lo) + 1 for lo, hi in node.get("slots", []))
        flags = set(str(node.get("flags", "")).split(","))
        role = "master" if "master" in flags else "replica" if "slave" in flags else "?"
        link = (
            "failed"
            if flags & {"fail", "fail?"}
            else ("connected" if node.get("connected") else "disconnected")
        )
        rows.append(
            {
                "address": address.split("@")[0],
                "role": role,
                "link": link,
                "slots": count,
                "ranges": ranges,
            }
        )
    return sorted(rows, key=lambda r: r["address"])


def status(settings: Settings) -> list[ComponentStatus]:
    """One row for the cluster (state, slot coverage) and one per node (role, slot
    ranges, keys), as the nodes themselves report them."""
    try:
        view = cluster_view(settings)
    except ConfigError as exc:  # no password yet: the profile never started the nodes
        view = {"state": "unreachable", "covered": 0, "nodes": [], "error": str(exc)}
    nodes = [n for n in view["nodes"] if n["role"] == "master"]
    want = len(settings.cluster.redis.ports) if local_cluster(settings) else 1
    ok = view["state"] == "ok" and view["covered"] == SLOTS and len(nodes) >= want
    detail = f"state {view['state']}, {view['covered']}/{SLOTS} slots covered by "
    detail += f"{len(nodes)} masters" + (f" ({view['error']})" if "error" in view else "")
    address = "{}:{}".format(*settings.redis.host_port)  # the URL may hold a password
    rows = [ComponentStatus("redis-cluster", address, ok, detail, bool(running(settings)))]
    by_address = {n["address"]: n for n in view["nodes"]}
    for name, host, port in _nodes(settings) if local_cluster(settings) else []:
        node = by_address.get(f"{host}:{port}")
        up = node is not None and node["link"] == "connected" and node["slots"] > 0
        text = "not in the cluster" if node is None else f"{node['role']}, link {node['link']}"
        if node is not None:
            text += f", {node['slots']} slots ({' '.join(node['ranges'])})"
        managed = managed_pid(settings, name) is not None
        rows.append(ComponentStatus(name, f"{host}:{port}", up, text, managed))
    return rows


def stop(settings: Settings) -> list[str]:
    """Stop the nodes this work dir started (their files stay for the next start)."""
    return [name for name, _, _ in _nodes(settings) if stop_managed(settings, name)]


def running(settings: Settings) -> list[str]:
    return [name for name, _, _ in _nodes(settings) if managed_pid(settings, name) is not None]
