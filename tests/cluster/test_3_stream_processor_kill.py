"""One of the profile's two stream processors SIGKILLed while events stream in.

The other member of the consumer group takes the killed one's partitions and applies what
it had not committed; the online features then equal those computed straight from the
events, so no event was lost and none counted twice. ``rtrec up --profile cluster``
starts the killed processor again.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from click.testing import CliRunner

from rtrec.app.cli import main
from rtrec.app.cluster_stream import applied, metrics_text, processors
from rtrec.app.processes import alive, managed_pid
from rtrec.config import Settings
from tests.cluster.support import committed, own_users_events
from tests.stream_helpers import assert_online_equals, reference, wait_for


@pytest.fixture
def restarts_processors(settings: Settings) -> Iterator[None]:
    """Whatever the test does, every processor runs again afterwards (``up`` starts the
    ones that are not running): the tests after it need both."""
    yield
    if any(managed_pid(settings, name) is None for name, _ in processors(settings)):
        CliRunner().invoke(main, ["up", "--profile", "cluster"])


RATE = 600.0
"""Events per second offered: the replay lasts a few seconds, the kill lands in it."""


def test_a_killed_processor_loses_nothing_and_counts_nothing_twice(
    settings: Settings, restarts_processors: None
) -> None:
    from rtrec.streaming import replay_dataset

    data = own_users_events("kill-", seed=17, start_ts=1_763_000_000_000, n_events=3000)
    (victim, _), (survivor, survivor_port) = processors(settings)
    applied_before = applied(metrics_text(survivor_port) or "")
    base = committed(settings)  # every earlier test's events
    sender = threading.Thread(
        target=replay_dataset, args=(settings, data), kwargs={"rate": RATE, "progress": False}
    )
    sender.start()
    time.sleep(len(data.events) / RATE / 2)
    old = managed_pid(settings, victim)
    assert old is not None and alive(old)
    procs = [psutil.Process(old), *psutil.Process(old).children(recursive=True)]
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    killed = time.monotonic()
    sender.join(120)
    assert not sender.is_alive()

    def all_committed() -> bool:
        return committed(settings) >= base + len(data.events)

    wait_for(all_committed, 180, "the surviving processor did not commit every event")
    print(f"every event committed {time.monotonic() - killed:.1f} s after the kill")
    assert_online_equals(settings, reference(data.events))  # nothing lost, nothing twice
    assert applied(metrics_text(survivor_port) or "") > applied_before, survivor
    assert not alive(old)

    out = CliRunner().invoke(main, ["up", "--profile", "cluster"])
    assert out.exit_code == 0, out.output
    assert managed_pid(settings, victim) not in (None, old)
