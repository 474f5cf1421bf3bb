"""Logging inside an Airflow task: our levels, extras kept, stderr lines at their level."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rtrec.logging import ExtrasInMessage, configure_task_logging, route_stderr, stderr_level


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("WARNING: Using incubator modules: jdk.incubator.vector", logging.INFO),
        ('Setting default log level to "WARN".', logging.INFO),
        ("To adjust logging level use sc.setLogLevel(newLevel).", logging.INFO),
        ("2026/12/03 10:47:32 INFO mlflow.store: Registered model 'm' already exists.", 20),
        ("Successfully registered model 'rtrec-two-tower'.", logging.INFO),
        ("Registered model 'm' already exists. Creating a new version of this model...", 20),
        ("Created version '2' of model 'rtrec-two-tower'.", logging.INFO),
        ("10:47:32 WARN NativeCodeLoader: Unable to load native-hadoop", logging.WARNING),
        ("10:47:32 ERROR Executor: Exception in task 0.0", logging.ERROR),
        ('{"ts": "x", "level": "INFO", "logger": "rtrec.training.trainer", "msg": "epoch"}', 20),
        ('{"level": "nonsense"}', logging.WARNING),
        ("Traceback (most recent call last):", logging.WARNING),
        ("something nobody announced", logging.WARNING),
    ],
)
def test_stderr_level(line: str, level: int) -> None:
    assert stderr_level(line) == level


def test_extras_are_folded_into_the_message_of_our_records_only() -> None:
    fold = ExtrasInMessage()
    ours = logging.LogRecord("rtrec.training.trainer", 20, "f", 1, "epoch %d", (3,), None)
    ours.loss = 0.5
    assert fold.filter(ours) and ours.getMessage() == 'epoch 3 {"loss": 0.5}'
    assert fold.filter(ours) and ours.getMessage() == 'epoch 3 {"loss": 0.5}'  # once only
    theirs = logging.LogRecord("airflow.task", 20, "f", 1, "x %s", ("y",), None)
    theirs.ti = "t"
    assert fold.filter(theirs) and theirs.getMessage() == "x y"


def test_configure_task_logging_sets_levels_and_hands_mlflow_to_the_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow  # noqa: F401  (configures its own stderr handler on import)

    root = logging.getLogger()
    handler = logging.NullHandler()
    mlflow_logger = logging.getLogger("mlflow")
    saved = (mlflow_logger.handlers[:], mlflow_logger.propagate)
    levels = {n: logging.getLogger(n).level for n in ("rtrec", "kafka")}
    root.addHandler(handler)
    monkeypatch.delenv("MLFLOW_CONFIGURE_LOGGING", raising=False)
    try:
        configure_task_logging()
        assert logging.getLogger("rtrec").level == logging.INFO
        assert logging.getLogger("rtrec.training").getEffectiveLevel() == logging.INFO
        assert logging.getLogger("kafka").level == logging.WARNING
        assert mlflow_logger.handlers == [] and mlflow_logger.propagate
        assert os.environ["MLFLOW_CONFIGURE_LOGGING"] == "false"
        assert sum(isinstance(f, ExtrasInMessage) for f in handler.filters) == 1
        configure_task_logging()  # idempotent
        assert sum(isinstance(f, ExtrasInMessage) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)
        mlflow_logger.handlers[:], mlflow_logger.propagate = saved
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_route_stderr_is_a_no_op_where_stderr_is_not_a_task_socket() -> None:
    before = os.fstat(2)
    with route_stderr():
        assert os.fstat(2).st_ino == before.st_ino


ROUTED = """
import json, logging, os, socket, subprocess, sys
from rtrec.logging import route_stderr

# fd 2 as an Airflow task process has it: a socket to the supervisor.
mine, supervisor = socket.socketpair()
os.dup2(mine.fileno(), 2)
sys.stderr = os.fdopen(2, "w", buffering=1)

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append((record.name, record.levelname, record.getMessage()))
root = logging.getLogger()
root.handlers[:] = [Keep()]
root.setLevel(logging.INFO)

with route_stderr():
    sys.stderr.write("WARNING: Using incubator modules: jdk.incubator.vector\\n")
    subprocess.run(["sh", "-c", "echo '10:00:00 ERROR Executor: boom' >&2"], check=True)
    sys.stderr.write("something nobody announced\\n")
sys.stderr.write("after the step\\n")
sys.stderr.flush()
supervisor.settimeout(2)
raw = supervisor.recv(65536).decode()
print(json.dumps({"records": records, "raw": raw}))
"""


def test_route_stderr_logs_each_line_at_its_level_in_a_task_process(tmp_path: Path) -> None:
    script = tmp_path / "routed.py"
    script.write_text(textwrap.dedent(ROUTED))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    body = json.loads(out.stdout.strip().splitlines()[-1])
    assert body["records"] == [
        ["rtrec.dags.stderr", "INFO", "WARNING: Using incubator modules: jdk.incubator.vector"],
        ["rtrec.dags.stderr", "ERROR", "10:00:00 ERROR Executor: boom"],
        ["rtrec.dags.stderr", "WARNING", "something nobody announced"],
    ]
    # Only what came after the step reached the supervisor's socket (as Airflow's stderr).
    assert body["raw"] == "after the step\n"


class _Net:
    """The two calls a kafka-python transport makes on its event loop when it closes."""

    def unregister_event(self, sock: object, events: int) -> None:
        pass

    def cancel(self, task: object) -> None:
        pass


def _transport_errors(close_first: bool) -> list[logging.LogRecord]:
    """Records a real kafka-python transport logs when its ``recv`` fails: after its owner
    closed it (the IO thread's race with ``close()``), or on a socket broken underneath."""
    import socket

    from kafka.net.transport import KafkaTCPTransport

    caught: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = caught.append  # type: ignore[method-assign]
    kafka_logger = logging.getLogger("kafka")
    saved = kafka_logger.level
    kafka_logger.addHandler(handler)
    ours, theirs = socket.socketpair()
    try:
        configure_task_logging()
        transport = KafkaTCPTransport(_Net(), ours)
        if close_first:
            transport.close()
        else:
            ours.close()  # recv on it raises, while the transport still counts as open
        _, err = transport._sock_recv()
        assert err is not None
    finally:
        kafka_logger.removeHandler(handler)
        kafka_logger.setLevel(saved)
        ours.close()
        theirs.close()
    return caught


def test_a_recv_after_its_own_close_is_not_logged_as_an_error() -> None:
    assert _transport_errors(close_first=True) == []


def test_a_recv_failing_on_an_open_connection_stays_an_error() -> None:
    (record,) = _transport_errors(close_first=False)
    assert record.levelno == logging.ERROR and "Error receiving" in record.getMessage()
