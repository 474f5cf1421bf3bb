"""The feedback publisher answers fast when the broker is down and recovers by itself."""

from __future__ import annotations

import socket
import time

import pytest
from rtrec.serving.feedback import Publisher, broker_reachable
from rtrec.serving.schemas import EXAMPLE_FEEDBACK

from rtrec.config import load_settings
from rtrec.errors import Unavailable
from rtrec.events import parse_event
from tests.conftest import free_port


def test_dead_broker_fails_fast_then_breaker_answers_at_once(tmp_path) -> None:
    port = free_port()
    settings = load_settings(work_dir=tmp_path)
    settings.kafka.bootstrap_servers = f"127.0.0.1:{port}"
    publisher = Publisher(settings, probe_interval_s=0.05)
    events = [parse_event(EXAMPLE_FEEDBACK["events"][0])]

    # Refused by the reachability check (a connect, milliseconds), not after kafka-python's
    # 30 s bootstrap wait: the error is the check's own.
    with pytest.raises(Unavailable, match=f"no bootstrap server reachable.*{port}"):
        publisher(events)
    assert publisher.down_reason is not None

    sends = []
    publisher._send = lambda batch: sends.append(batch)  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match="marked down"):
        publisher(events)
    assert sends == []  # the open breaker answered without trying the broker

    # Something listens on the port again: the probe closes the breaker.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        publisher.start()
        deadline = time.monotonic() + 5
        while publisher.down_reason is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        publisher.stop()
        assert publisher.down_reason is None
        assert broker_reachable(settings.kafka.bootstrap_servers) is None


def test_reachability_names_every_address() -> None:
    a, b = free_port(), free_port()
    reason = broker_reachable(f"127.0.0.1:{a}, 127.0.0.1:{b}")
    assert reason is not None and str(a) in reason and str(b) in reason
