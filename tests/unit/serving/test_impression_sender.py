"""The impression sender's child process: a broker that does not take a round is an error
answer (the child stays); a child that died is restarted on the next round; a child
whose service went away exits; the child runs at a lower CPU priority. Rounds a real
broker takes are tested against the stack's broker in
``tests/integration/test_serving.py`` (the service's default sender)."""

from __future__ import annotations

import time

import pytest
from rtrec.serving.impression_sender import ProcessSender

from rtrec.errors import Unavailable
from tests.conftest import free_port


def entry(n: int = 0) -> tuple:
    answer = {
        "request_id": f"{n:032x}",
        "user_id_hash": "h",
        "variant": "champion",
        "experiment": None,
        "model_version": "1",
        "items": [{"item_id": "i1", "score": 0.5}],
        "fallback": False,
    }
    return (int(time.time() * 1000), f"u{n}", 10, None, answer)


@pytest.fixture
def sender():
    out = ProcessSender(f"127.0.0.1:{free_port()}", "impressions", timeout_s=0.5)
    yield out
    out.close()


def test_a_dead_broker_is_an_error_answer_and_the_child_stays(sender: ProcessSender) -> None:
    proc = sender.start()
    with pytest.raises(Unavailable, match="impression broker unavailable: "):
        sender.send([entry(1), entry(2)])
    assert proc.poll() is None  # it answered and waits for the next round
    with pytest.raises(Unavailable, match="impression broker unavailable: "):
        sender.send([entry(3)])
    assert sender._proc is proc


def test_a_dead_child_is_restarted_on_the_next_round(sender: ProcessSender) -> None:
    first = sender.start()
    first.kill()
    first.wait()
    with pytest.raises(Unavailable, match="impression sender exited"):
        sender.send([entry()])
    # The next round starts a new child, which answers (the broker's error, not an exit).
    with pytest.raises(Unavailable, match="impression broker unavailable: "):
        sender.send([entry()])
    assert sender._proc is not None and sender._proc.pid != first.pid


def test_the_child_runs_below_the_service_priority(sender: ProcessSender) -> None:
    import os

    import psutil
    from rtrec.serving.impression_sender import NICE

    proc = sender.start()  # past its "ready" line, so past its nice() call
    assert psutil.Process(proc.pid).nice() == min(os.nice(0) + NICE, 19)


def test_the_child_exits_when_its_service_goes(sender: ProcessSender) -> None:
    proc = sender.start()
    assert proc.stdin is not None
    proc.stdin.close()  # what the kernel does when the service dies
    assert proc.wait(10) == 0
