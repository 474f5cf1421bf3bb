"""JSON-lines logging, configured only by entry points (CLI, service, DAG tasks).

Log records may carry ``model_version`` and ``run_id`` extras; they are written as fields.
User ids must never be logged raw: use :func:`redact_id`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from typing import Any

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


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
        for key, value in vars(record).items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str | int = "INFO", *, json_lines: bool = True) -> None:
    """Configure the root logger once, from an entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("kafka", "py4j", "urllib3", "alembic", "feast"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def redact_id(raw: str, *, salt: str = "rtrec") -> str:
    """A stable, non-reversible token for an id, safe to put in logs."""
    return "h:" + hashlib.blake2b(f"{salt}:{raw}".encode(), digest_size=6).hexdigest()
