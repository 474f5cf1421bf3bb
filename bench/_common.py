"""What several benchmarks share (each runs as a script with the repository on sys.path)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nothing listens on now, for a benchmark's own broker, Redis or service."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
