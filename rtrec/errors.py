"""One error tree for the whole platform.

Stages raise these where a problem is found; ``serving/`` translates them to HTTP
status codes and ``rtrec.cli`` to exit codes, nowhere else.
"""

from __future__ import annotations


class RtrecError(Exception):
    """Base of every error rtrec raises on purpose."""

    exit_code = 1


class InvalidInput(RtrecError):
    """Input that breaks the contract; the message names the offending field or id."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(RtrecError):
    """A named thing (user, item, model version, file) does not exist."""

    exit_code = 3


class Unavailable(RtrecError):
    """A dependency (broker, Redis, registry, port) cannot be reached or is taken."""

    exit_code = 4


class ConfigError(RtrecError):
    """Settings that cannot work together; the message names the setting."""

    exit_code = 5
