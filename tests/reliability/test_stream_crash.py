"""Crash consistency: the stream processor SIGKILLed again and again during a replay.

A real ``rtrec stream run`` subprocess is killed at seeded random moments (during start-up,
mid-batch, while the live part of the replay is still arriving) and restarted each time.
At the end the online features (user and item stream features, trending) equal an
uninterrupted reference computed from the events, and the offline log holds each
accepted event exactly once after dropping crash repeats.
"""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path

import pytest
from rtrec.streaming.producer import make_producer, publish

from rtrec.config import Settings
from rtrec.data import SyntheticConfig, generate
from tests.stream_helpers import (
    applied_count,
    assert_items_exact,
    assert_offline_exact,
    assert_online_equals,
    env,
    isolated,
    logged_count,
    reference,
    start_processor,
    wait_applied,
    wait_for,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

KILLS = 5
SEED = 20261201


def test_repeated_sigkills_during_a_replay_end_exact(stack: Settings, tmp_path: Path) -> None:
    data = generate(SyntheticConfig.small(seed=5, n_users=250, n_items=150, n_events=10_000))
    s = isolated(stack, tmp_path)
    rng = random.Random(SEED)
    pairs = list(data.iter_keyed_event_json())
    backlog = len(pairs) // 5
    publish(s, pairs[:backlog], progress=False)
    producer = make_producer(s)
    live = threading.Thread(  # the rest arrives while the processor is being killed
        target=publish,
        args=(s, pairs[backlog:]),
        kwargs={"progress": False, "rate": 300, "producer": producer},
    )
    kills: list[tuple[int, bool]] = []  # (events applied at the kill, replay still arriving)
    try:
        for k in range(KILLS):
            before = applied_count(s)
            proc = start_processor(s, env(s))
            if k == 0:
                live.start()
            if rng.random() < 0.3 or before == len(pairs):  # start-up or first batches
                wait_for(lambda p=proc: p.poll() is None, 5, "processor running")
                threading.Event().wait(rng.uniform(0.5, 4.0))
            else:  # mid-stream: after this run has made progress
                wait_applied(s, before + 1, timeout=60)
                threading.Event().wait(rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append((applied_count(s), live.is_alive()))
        live.join()
        proc = start_processor(s, env(s))
        try:
            wait_applied(s, len(pairs), timeout=120)
            wait_for(lambda: logged_count(s) >= len(pairs), 30, "offline log complete")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0  # clean stop on SIGTERM
    finally:
        producer.close()
    assert any(arriving for _, arriving in kills), kills  # some kills hit the live replay
    assert any(0 < n < len(pairs) for n, _ in kills), kills  # and landed mid-stream
    assert_online_equals(s, reference(data.events))
    assert_items_exact(s, data.events)
    assert_offline_exact(s, data.events)
