"""JSON-lines logging, configured only by entry points (CLI, service, DAG tasks).

Log records may carry ``model_version`` and ``run_id`` extras; they are written as fields.
User ids must never be logged raw: use :func:`redact_id` (salted with a secret that every
process of a work dir shares: :func:`redact_salt`).

Inside an Airflow task the handlers are Airflow's (JSON lines to the task log, shown in
the UI): :func:`configure_task_logging` only sets levels and keeps extras, and
:func:`route_stderr` gives raw stderr lines (the Spark JVM's, third-party notices) the
level they have instead of the error level Airflow gives all of stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtrec.config import Settings

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

OWN_LOGGERS = ("rtrec",)
"""Top-level packages whose loggers are ours."""
NOISY_LOGGERS = ("kafka", "py4j", "urllib3", "alembic", "feast")
"""Third-party loggers that say too much at INFO (connection chatter, migrations)."""
KAFKA_TRANSPORT_LOGGERS = ("kafka.net.transport", "kafka.net.backend.transport")
"""Where kafka-python 3 logs socket errors (the module moved after 3.0.12)."""


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ClosedTransportNoise(logging.Filter):
    """kafka-python's errors about a connection its owner had already closed: DEBUG.

    kafka-python 3 closes connections from the caller's thread (a consumer's or producer's
    ``close()``) while its IO thread may be between "socket readable" and ``recv``; that
    ``recv`` then fails on the closed socket (``'NoneType' object has no attribute
    'recv'``, ``socket disconnected``) and is logged at ERROR, which an Airflow task's log
    shows as a failure. Nothing is lost: the close was ours, after its answers came.
    Demoted only when the transport in the record says it is closing, so a failure on an
    open connection stays an error; kept at DEBUG when the ``kafka`` logger is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        closing = getattr(args[0], "is_closing", None) if args else None
        if record.levelno < logging.ERROR or not callable(closing) or closing() is not True:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _quiet_noisy_loggers() -> None:
    """Third-party chatter at WARNING, closed-connection noise at DEBUG. Idempotent."""
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in KAFKA_TRANSPORT_LOGGERS:
        transport = logging.getLogger(name)
        if not any(isinstance(f, ClosedTransportNoise) for f in transport.filters):
            transport.addFilter(ClosedTransportNoise())


def configure_logging(level: str | int = "INFO", *, json_lines: bool = True) -> None:
    """Configure the root logger once, from an entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _quiet_noisy_loggers()


class ExtrasInMessage(logging.Filter):
    """Append a record's extras to its message as JSON, for our loggers only.

    Airflow's task-log formatter keeps the message, level and logger of a stdlib record
    but drops its extras, and ours carry the figures (``epoch done`` with the loss, the
    drift verdict's share); folded into the message they reach the task log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in OWN_LOGGERS and not getattr(record, "_folded", False):
            extras = _extras(record)
            if extras:
                record.msg = f"{record.getMessage()} {json.dumps(extras, default=str)}"
                record.args = None
            record._folded = True
        return True


def configure_task_logging(level: str | int = "INFO") -> None:
    """Inside an Airflow task: our loggers at ``level`` through Airflow's own handlers.

    Airflow's handlers stay (they write the task log); its root level (``[logging]
    logging_level``) still caps what is written. MLflow's loggers, which by default write
    to stderr with a handler of their own (stored by Airflow as errors), propagate to
    Airflow's handlers instead. Idempotent.
    """
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    _quiet_noisy_loggers()
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    if "mlflow" in sys.modules:  # imported (and configured) before this call
        mlflow_logger = logging.getLogger("mlflow")
        mlflow_logger.handlers.clear()
        mlflow_logger.propagate = True
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ExtrasInMessage) for f in handler.filters):
            handler.addFilter(ExtrasInMessage())


BENIGN_STDERR = (
    # The JDK announces the incubator module Spark 4 loads, on every JVM start.
    re.compile(r"^WARNING: Using incubator modules: "),
    # Spark's notice of its console log level, printed at session start.
    re.compile(r"^Setting default log level to "),
    re.compile(r"^To adjust logging level use sc\.setLogLevel"),
    # MLflow prints its registry's progress with print(), not its logger.
    re.compile(r"^Successfully registered model '"),
    re.compile(r"^Registered model '.*' already exists\. Creating a new version"),
    re.compile(r"^(?:\W+ )?Created version '\d+' of model '"),
    re.compile(r"^Copied version '\d+' of model '"),
)
"""Raw stderr lines that are notices, not problems: logged at INFO."""

_LEVELLED = (
    # Python logging's and MLflow's own formats: "2026/12/03 10:47:32 INFO mlflow...: ..."
    re.compile(r"^(?:\S+ \S+ )?(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)[ :]"),
    # log4j patterns (Spark's JVM): "10:47:32 WARN NativeCodeLoader: ..."
    re.compile(r"^(?:\S+ )?(?P<level>TRACE|DEBUG|INFO|WARN|ERROR|FATAL) "),
)
_LEVEL_NAMES = {"TRACE": logging.DEBUG, "WARN": logging.WARNING, "FATAL": logging.CRITICAL}


def _level(name: str) -> int | None:
    """A level number from its name (log4j's names too); None for anything else."""
    name = name.upper()
    number = _LEVEL_NAMES.get(name, logging.getLevelNamesMapping().get(name))
    return number if isinstance(number, int) and number > 0 else None


def stderr_level(line: str) -> int:
    """The level a raw stderr line deserves: its own when it states one (a log line of a
    library's own handler, a JSON line of ours), INFO for a known notice, else WARNING.

    Not ERROR for an unknown line: a step that fails raises, and Airflow logs that
    exception as the error; a line printed by a step that then succeeds is worth a look,
    not an alarm.
    """
    text = line.strip()
    if text.startswith("{"):
        with contextlib.suppress(ValueError, AttributeError):
            stated = _level(str(json.loads(text).get("level", "")))
            if stated is not None:
                return stated
    if any(p.search(text) for p in BENIGN_STDERR):
        return logging.INFO
    for pattern in _LEVELLED:
        m = pattern.match(text)
        if m and (stated := _level(m.group("level"))) is not None:
            return stated
    return logging.WARNING


def _writes_to_fd(handler: logging.Handler, fd: int) -> bool:
    stream = getattr(handler, "stream", None)
    try:
        return stream is not None and stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


def _stderr_is_captured_socket() -> bool:
    """True in an Airflow task process: fd 2 is the supervisor's socket and no logging
    handler writes to it (which would loop lines back into the router)."""
    try:
        if not stat.S_ISSOCK(os.fstat(2).st_mode):
            return False
    except OSError:
        return False
    return not any(_writes_to_fd(h, 2) for h in logging.getLogger().handlers)


@contextlib.contextmanager
def route_stderr(logger_name: str = "rtrec.dags.stderr") -> Iterator[None]:
    """Log every line written to file descriptor 2 meanwhile at :func:`stderr_level`.

    Only in an Airflow task process (elsewhere a no-op): Airflow stores all of a task's
    stderr at level error, and a Spark session or MLflow prints notices there. Child
    processes started meanwhile (the Spark JVM) keep writing through the router for the
    rest of the task process's life; on exit every line written so far has been logged.
    """
    if not _stderr_is_captured_socket():
        yield
        return
    log = logging.getLogger(logger_name)
    sentinel = f"--rtrec-stderr-drained-{uuid.uuid4().hex}--"
    drained = threading.Event()
    read_fd, write_fd = os.pipe()

    def pump() -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                text = line.rstrip("\n")
                if text == sentinel:
                    drained.set()
                    continue
                if text.strip():
                    log.log(stderr_level(text), "%s", text)
        drained.set()

    threading.Thread(target=pump, name="rtrec-stderr", daemon=True).start()
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(write_fd, 2)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        # The pipe is FIFO: once the sentinel comes out, everything before it has too.
        os.write(write_fd, f"\n{sentinel}\n".encode())
        os.close(write_fd)
        drained.wait(timeout=5)


SALT_FILE = Path("secrets") / "redact_salt"
"""Where, under the work dir, the generated salt is kept when ``redact_salt`` is unset."""
_salt: dict[str, bytes] = {}
_salt_lock = threading.Lock()


def redact_salt(settings: Settings) -> str:
    """The salt of :func:`redact_id`: ``settings.redact_salt``, else the one in
    ``<work_dir>/secrets/redact_salt``, generated there on first use (directory 0700,
    file 0600) so that every process of a work dir (service, stream processor, CLI)
    hashes an id to the same token, and nobody without the file can."""
    if settings.redact_salt is not None:
        return settings.redact_salt.get_secret_value()
    path = settings.work_dir / SALT_FILE
    if not path.exists():
        _create_salt(path)
    if path.stat().st_mode & 0o077:
        logging.getLogger(__name__).warning(
            "%s is readable by other users: chmod 600 it", path, extra={"path": str(path)}
        )
    salt = path.read_text().strip()
    if len(salt) < 16:
        from rtrec.errors import ConfigError

        raise ConfigError(
            f"{path} holds no usable salt (under 16 characters): delete it to generate a new "
            "one (redacted ids change) or set RTREC_REDACT_SALT"
        )
    return salt


def _create_salt(path: Path) -> None:
    """Write a random salt to ``path`` atomically; a salt another process wrote first wins
    (a hard link never replaces an existing file, and appears only when complete)."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is cut by the umask, never widened
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def use_redact_salt(salt: str) -> None:
    """Make ``salt`` this process's salt for :func:`redact_id`."""
    _salt["key"] = _salt_key(salt)


def load_redact_salt(settings: Settings | None = None) -> None:
    """Load (or create) the work dir's salt and use it in this process: entry points call
    this at start so that a salt that cannot be read fails the start, not a request;
    :func:`redact_id` calls it on first use where no entry point did."""
    if settings is None:
        from rtrec.config import get_settings

        settings = get_settings()
    use_redact_salt(redact_salt(settings))


def _salt_key(salt: str) -> bytes:
    return hashlib.blake2b(salt.encode(), digest_size=32).digest()  # blake2b keys: <= 64 B


def redact_id(raw: str, *, salt: str | None = None) -> str:
    """A stable, non-reversible token for an id, safe to put in logs: a keyed BLAKE2b
    under the process's secret salt (:func:`redact_salt`), so a token cannot be matched
    to an id by hashing guessed ids without the salt. ``salt`` overrides it (tests)."""
    if salt is not None:
        key = _salt_key(salt)
    else:
        key = _salt.get("key", b"")
        if not key:
            with _salt_lock:
                if "key" not in _salt:
                    load_redact_salt()
            key = _salt["key"]
    return "h:" + hashlib.blake2b(raw.encode(), key=key, digest_size=6).hexdigest()
