"""PostgreSQL for the cluster profile: MLflow's backend store (and Airflow's, later).

One server per work dir, its data directory ``<work_dir>/postgres/data`` made by ``initdb``
on the first start, listening on TCP only (``cluster.postgres.host``/``port``; no Unix
socket, so nothing reaches it past the password check). Each database has its own owning
role; every role's password is ``cluster.postgres.password`` or, unset, one generated into
``<work_dir>/secrets/postgres_password`` (0600). Passwords never appear on a command line
or in a pid file: initdb reads a temporary file, and clients get it through the
environment. PostgreSQL refuses to run as root, so under root it runs as
``cluster.postgres.os_user``, which must be able to reach the work dir.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rtrec.app.processes import managed_pid, start_managed
from rtrec.config import Settings
from rtrec.errors import Unavailable

NAME = "postgres"
PASSWORD_FILE = Path("secrets") / "postgres_password"


def password(settings: Settings) -> str:
    """The roles' password: the setting, else the work dir's generated one."""
    pg = settings.cluster.postgres
    if pg.password is not None:
        return pg.password.get_secret_value()
    path = settings.work_dir / PASSWORD_FILE
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is cut by the umask, never widened
        with contextlib.suppress(FileExistsError):  # another `up` wrote it first: use that
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def data_dir(settings: Settings) -> Path:
    return settings.work_dir / "postgres" / "data"


def database_uri(settings: Settings, database: str) -> str:
    """SQLAlchemy URI of ``database`` as its owning role, password included: for a
    child's environment only, never a log line or a command line."""
    pg = settings.cluster.postgres
    secret = quote(password(settings), safe="")
    return f"postgresql+psycopg2://{database}:{secret}@{pg.host}:{pg.port}/{database}"


def program(settings: Settings, name: str) -> str:
    """``initdb`` or ``postgres``: from ``cluster.postgres.bin_dir``, else the newest
    Debian-packaged server (its binaries are not on ``PATH``), else ``PATH``."""
    configured = settings.cluster.postgres.bin_dir
    found: list[Path] = [configured / name] if configured is not None else []
    if configured is None:
        versions = Path("/usr/lib/postgresql").glob("*/bin")
        found = sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
        found = [d / name for d in found if d.parent.name.isdigit()]
        found += [Path(p) for p in [shutil.which(name)] if p]
    for path in found:
        if path.is_file():
            return str(path)
    raise Unavailable(
        f"PostgreSQL's {name} not found (apt-get install postgresql, or set "
        "cluster.postgres.bin_dir)"
    )


def _run_as(settings: Settings) -> str | None:
    return settings.cluster.postgres.os_user if os.geteuid() == 0 else None


def _check_reachable(path: Path, user: str) -> None:
    """Fail now, naming the directory, when ``user`` cannot enter one of ``path``'s
    parents (``/root`` is 0700): initdb would fail with a less helpful message."""
    account = pwd.getpwnam(user)
    groups = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    for parent in reversed(path.parents):
        st = parent.stat()
        owner, group = st.st_uid == account.pw_uid, st.st_gid in groups
        bit = 0o100 if owner else 0o010 if group else 0o001
        if not st.st_mode & bit:
            raise Unavailable(
                f"PostgreSQL runs as {user!r} (it refuses root), who cannot enter {parent} "
                f"(mode {oct(st.st_mode & 0o777)}): put work_dir where {user!r} can reach "
                "it, or run rtrec as another user"
            )


def _initdb(settings: Settings) -> None:
    """Create the data directory once (superuser ``cluster.postgres.superuser``)."""
    pg, data = settings.cluster.postgres, data_dir(settings)
    if (data / "PG_VERSION").exists():
        return
    user = _run_as(settings)
    data.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(data.parent, 0o700)
    pwfile = data.parent / ".initdb-password"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password(settings) + "\n")
    if user is not None:
        _check_reachable(data.parent, user)
        account = pwd.getpwnam(user)
        for path in (data.parent, pwfile):
            os.chown(path, account.pw_uid, account.pw_gid)
    cmd = [program(settings, "initdb"), "-D", str(data), "-U", pg.superuser]
    cmd += [f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-locale"]
    group = pwd.getpwnam(user).pw_gid if user is not None else None
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, user=user, group=group, check=False
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if out.returncode != 0:
        raise Unavailable(f"initdb failed ({out.returncode}): {(out.stderr or out.stdout)[-800:]}")


def connect(settings: Settings, database: str = "postgres", role: str | None = None) -> Any:
    """A psycopg2 connection as ``role`` (default: the superuser), password from
    :func:`password`, over TCP: the server has no Unix socket."""
    import psycopg2

    pg = settings.cluster.postgres
    return psycopg2.connect(
        host=pg.host,
        port=pg.port,
        dbname=database,
        user=role or pg.superuser,
        password=password(settings),
        connect_timeout=3,
    )


def _accepts(settings: Settings) -> bool:
    """Ready means a password login succeeds (the port opens before recovery ends)."""
    try:
        connect(settings).close()
    except Exception:  # psycopg2.OperationalError while starting up
        return False
    return True


def _ensure_databases(settings: Settings) -> None:
    """MLflow's and Airflow's roles and databases (idempotent)."""
    from psycopg2 import sql

    pg = settings.cluster.postgres
    conn = connect(settings)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            for name in (pg.mlflow_db, pg.airflow_db):
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(
                        sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(name)),
                        (password(settings),),
                    )
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    ident = sql.Identifier(name)
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, ident))
    finally:
        conn.close()


def start(settings: Settings) -> None:
    """initdb once, start the server, create the databases (all idempotent)."""
    pg = settings.cluster.postgres
    _initdb(settings)
    cmd = [program(settings, "postgres"), "-D", str(data_dir(settings)), "-p", str(pg.port)]
    for option in (
        f"listen_addresses={pg.host}",
        "unix_socket_directories=",
        "shared_buffers=32MB",
        "max_connections=50",
    ):
        cmd += ["-c", option]
    start_managed(
        settings,
        NAME,
        cmd,
        port=(pg.host, pg.port),
        ready=lambda: _accepts(settings),
        timeout=60,
        stop_signal=signal.SIGINT,  # fast shutdown; SIGTERM would wait for every client
        user=_run_as(settings),
    )
    _ensure_databases(settings)


def health(settings: Settings) -> tuple[bool, str, bool]:
    """(healthy, detail, managed): each database answers a login as its own role."""
    managed = managed_pid(settings, NAME) is not None
    pg = settings.cluster.postgres
    for name in (pg.mlflow_db, pg.airflow_db):
        try:
            connect(settings, name, name).close()
        except Exception as exc:  # any driver error: down, with the reason
            return False, f"login to {name!r} failed: {str(exc).strip()[:200]}", managed
    return True, f"databases {pg.mlflow_db}, {pg.airflow_db}", managed
