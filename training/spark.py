"""The process's one Spark session (the training-set job's engine), quiet and local-safe."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TYPE_CHECKING

from rtrec.config import Settings, host_port

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_session: SparkSession | None = None


def spark_session(settings: Settings) -> SparkSession:
    """The process's one SparkSession, started on first use (~6 s) and reused after."""
    global _session
    with _lock:
        if _session is not None and not _session.sparkContext._jsc.sc().isStopped():
            return _session
        from pyspark.sql import SparkSession

        master = settings.spark.master
        # A standalone master on loopback (the cluster profile) runs its executors on
        # this machine: they must reach the driver on loopback too.
        on_loopback = master.startswith("local") or _loopback_master(master)
        if on_loopback:
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            SparkSession.builder.master(master)
            .appName("rtrec-training-sets")
            .config("spark.driver.memory", settings.spark.driver_memory)
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.default.parallelism", "4")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config(
                "spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile={_log4j(settings)}"
            )
        )
        if on_loopback:
            builder = builder.config("spark.driver.host", "127.0.0.1")
        _session = builder.getOrCreate()
        _session.sparkContext.setLogLevel("ERROR")
        logger.info("spark session started (master=%s)", master)
        return _session


def _loopback_master(master: str) -> bool:
    return master.startswith("spark://") and host_port(master, 7077)[0] in _LOOPBACK


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

_LOG4J = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex
logger.pygw.name = org.apache.spark.api.python.PythonGatewayServer
logger.pygw.level = error
"""


def _log4j(settings: Settings) -> str:
    """A log4j2 config that keeps Spark's JVM to errors, even during start-up."""
    path = settings.work_dir / "spark" / "log4j2.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_LOG4J)
    return path.as_uri()


def stop_spark() -> None:
    """Stop the shared session (tests, CLI exit); the next call starts a fresh one."""
    global _session
    with _lock:
        if _session is not None:
            _session.stop()
            _session = None
