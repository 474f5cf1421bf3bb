"""The stream phases of ``bench/cluster.py``: processor replicas in one consumer group.

Each phase runs on a fresh corner of one embedded stack (its own topic, consumer group and
Redis database) with real ``rtrec stream run`` processes:

- :func:`drain_rate`: the whole data set preloaded, then ``replicas`` processors started
  together; events per second from the first applied event to the last (start-up and
  the group's join are not counted; they are reported apart as ``join_s``).
- :func:`kill_one`: two processors on a live stream offered at ``rate`` events/s; one is
  SIGKILLed half way. Every event's delay from its acknowledged send to the moment its
  offset shows as applied in Redis (the processor's progress, polled every 10 ms) gives
  the rebalance gap: the p99 delay of the events sent in the 5 s after the kill, beside
  the p99 before it. Then the online features are compared with ones computed straight
  from the events: ``lost_events`` and ``double_counted_events`` count the per-user event
  counts below and above the truth.

The events are the synthetic generator's, their times squeezed into the last 50 minutes
so that every count window (the shortest is 1 h) spans all of a user's events: a user's
``cnt_<type>_1h`` is then exactly how many events of that type reached the store.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

SQUEEZE_MS = 50 * 60 * 1000
KILL_WINDOW_S = 5.0


def squeezed_events(n_events: int, seed: int) -> Any:
    """The synthetic data set with its event times mapped, in order, into the last 50 min."""
    from rtrec.data import SyntheticConfig, generate

    data = generate(SyntheticConfig.small(seed=seed, n_events=n_events))
    ts = data.events["ts"].to_numpy(dtype=np.int64)
    now = int(time.time() * 1000) - 60_000
    span = max(int(ts.max() - ts.min()), 1)
    data.events["ts"] = now - SQUEEZE_MS + (ts - ts.min()) * SQUEEZE_MS // span
    return data


def corner(base: Any, partitions: int) -> Any:
    """Settings for one phase: own topics, group and Redis DB (emptied) on ``base``'s stack."""
    import redis

    from rtrec.app import stack as stack_mod
    from rtrec.config import load_settings

    tag = uuid.uuid4().hex[:6]
    corner.db = getattr(corner, "db", 0) + 1
    s = load_settings(
        work_dir=base.work_dir / f"phase-{tag}",
        kafka={
            "bootstrap_servers": base.kafka.bootstrap_servers,
            "events_topic": f"ev-{tag}",
            "dlq_topic": f"dlq-{tag}",
            "alerts_topic": f"al-{tag}",
            "consumer_group": f"g-{tag}",
            "session_timeout_ms": 2000,
            "partitions": partitions,
        },
        redis={"url": f"{base.redis.url.rsplit('/', 1)[0]}/{corner.db}"},
    )
    redis.Redis.from_url(s.redis.url).flushdb()
    stack_mod.ensure_topics(s)
    return s


def _env(s: Any) -> dict[str, str]:
    return {
        "RTREC_WORK_DIR": str(s.work_dir),
        "RTREC_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "RTREC_KAFKA__EVENTS_TOPIC": s.kafka.events_topic,
        "RTREC_KAFKA__DLQ_TOPIC": s.kafka.dlq_topic,
        "RTREC_KAFKA__ALERTS_TOPIC": s.kafka.alerts_topic,
        "RTREC_KAFKA__CONSUMER_GROUP": s.kafka.consumer_group,
        "RTREC_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "RTREC_KAFKA__PARTITIONS": str(s.kafka.partitions),
        "RTREC_REDIS__URL": s.redis.url,
    }


def start_replicas(s: Any, n: int) -> list[Any]:
    """``n`` ``rtrec stream run`` processes of one consumer group, logs in the work dir."""
    import subprocess

    s.work_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **_env(s)}
    procs = []
    for i in range(n):
        log = open(s.work_dir / f"processor-{i}.log", "wb")  # noqa: SIM115 - the child keeps it
        cmd = [sys.executable, "-m", "rtrec.app.cli", "stream", "run"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def stop_replicas(procs: list[Any]) -> list[int | None]:
    """SIGTERM (a clean stop) to each live replica; their exit codes."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    return [p.wait(timeout=60) for p in procs]


_clients: dict[str, Any] = {}


def applied_offsets(s: Any) -> dict[int, int]:
    """Partition -> last applied offset, as the processor commits it with its batch."""
    import redis
    from rtrec.streaming.processor import offsets_key

    if s.redis.url not in _clients:  # polled every 10 ms: one client per database
        _clients[s.redis.url] = redis.Redis.from_url(s.redis.url)
    raw = _clients[s.redis.url].hgetall(offsets_key(s))
    return {int(k): int(v) for k, v in raw.items()}


def wait_applied(s: Any, n: int, timeout: float) -> float:
    """Seconds until ``n`` events are applied; TimeoutError naming the count otherwise."""
    start = time.perf_counter()
    while True:
        done = sum(v + 1 for v in applied_offsets(s).values())
        if done >= n:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{done} of {n} events applied after {timeout:.0f} s")
        time.sleep(0.01)


def drain_rate(base: Any, data: Any, replicas: int, partitions: int) -> dict[str, float]:
    """Preload every event, start ``replicas`` processors, time the drain."""
    from rtrec.streaming.producer import publish

    s = corner(base, partitions)
    pairs = list(data.iter_keyed_event_json())
    publish(s, pairs, progress=False)
    started = time.perf_counter()
    procs = start_replicas(s, replicas)
    try:
        join = wait_applied(s, 1, timeout=120)
        first = sum(v + 1 for v in applied_offsets(s).values())
        drain = join + wait_applied(s, len(pairs), timeout=600)
    finally:
        codes = stop_replicas(procs)
    # From the first committed batch to the last: the events after the first batch over
    # that time (a batch is up to 20,000 records, so the data set must be several).
    busy = drain - join
    if first >= len(pairs) or busy <= 0:
        raise ValueError(f"{len(pairs)} events drained in one batch: use more --events")
    return {
        "events": len(pairs),
        "join_s": round(join, 2),
        "first_batch": first,
        "events_per_s": round((len(pairs) - first) / busy, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "exit_codes": codes,
    }


@dataclass
class _Sent:
    partition: int
    offset: int
    at: float


class _Progress(threading.Thread):
    """Polls the applied offsets every 10 ms: (time, {partition: offset}) samples."""

    def __init__(self, s: Any) -> None:
        super().__init__(daemon=True)
        self.s, self.samples, self.stop = s, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            self.samples.append((time.perf_counter(), applied_offsets(self.s)))

    def applied_at(self, sent: list[_Sent]) -> np.ndarray:
        """When each sent event was first seen applied (inf if never)."""
        out = np.full(len(sent), np.inf)
        by_part: dict[int, list[int]] = {}
        for i, e in enumerate(sent):
            by_part.setdefault(e.partition, []).append(i)
        for part, idx in by_part.items():
            times = np.array([t for t, _ in self.samples])
            offs = np.array([o.get(part, -1) for _, o in self.samples])
            offs = np.maximum.accumulate(offs)
            want = np.array([sent[i].offset for i in idx])
            pos = np.searchsorted(offs, want, side="left")
            ok = pos < len(times)
            out[np.array(idx)[ok]] = times[pos[ok]]
        return out


def _send_all(s: Any, pairs: list[tuple[bytes, bytes]], rate: float, log: list[_Sent]) -> None:
    """Send at ``rate``; each acknowledged record's partition, offset and send time."""
    from rtrec.streaming.producer import make_producer

    producer = make_producer(s)
    start = time.perf_counter()
    for i, (key, value) in enumerate(pairs):
        lag = start + i / rate - time.perf_counter()
        if lag > 0:
            time.sleep(lag)
        at = time.perf_counter()
        producer.send(s.kafka.events_topic, key=key, value=value).add_callback(
            lambda md, at=at: log.append(_Sent(md.partition, md.offset, at))
        )
    producer.flush()
    producer.close()


def count_errors(s: Any, events: pd.DataFrame) -> tuple[int, int]:
    """(lost, double counted): per user and event type, the online 1 h count below and
    above the number of such events sent (all of them fall in the hour)."""
    from rtrec.features import online_features

    truth = events.groupby(["user_id", "event_type"]).size()
    users = sorted(events["user_id"].astype(str).unique())
    lost = double = 0
    for start in range(0, len(users), 500):
        chunk = users[start : start + 500]
        for user, row in zip(chunk, online_features(s, chunk), strict=True):
            for etype in ("view", "click", "add_to_cart", "purchase", "rating"):
                want = int(truth.get((user, etype), 0))
                got = int(row.get(f"cnt_{etype}_1h") or 0)
                lost += max(want - got, 0)
                double += max(got - want, 0)
    return lost, double


def kill_one(base: Any, data: Any, partitions: int, rate: float) -> dict[str, Any]:
    """Two replicas on a live stream, one SIGKILLed half way; delays, loss, double counts."""
    s = corner(base, partitions)
    pairs = list(data.iter_keyed_event_json())
    procs = start_replicas(s, 2)
    progress, sent = _Progress(s), []
    try:
        # Both members in the group before the stream starts: a warm-up event, applied.
        from rtrec.streaming.producer import publish

        publish(s, pairs[:1], progress=False)
        wait_applied(s, 1, timeout=120)
        time.sleep(3.0)  # the second member's join settles (session timeout 2 s)
        progress.start()
        sender = threading.Thread(target=_send_all, args=(s, pairs[1:], rate, sent))
        sender.start()
        time.sleep(len(pairs) / rate / 2)
        victim = procs[1]
        killed_at = time.perf_counter()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        sender.join()
        wait_applied(s, len(pairs), timeout=300)
        time.sleep(0.05)
    finally:
        progress.stop.set()
        codes = stop_replicas(procs)
    progress.join()
    lost, double = count_errors(s, data.events)
    sent_at = np.array([e.at for e in sent])
    delay_ms = (progress.applied_at(sent) - sent_at) * 1000
    after = delay_ms[(sent_at >= killed_at) & (sent_at < killed_at + KILL_WINDOW_S)]
    before = delay_ms[sent_at < killed_at]
    return {
        "events": len(pairs),
        "rate_eps": rate,
        "rebalance_gap_p99_ms": round(float(np.percentile(after, 99)), 1),
        "rebalance_gap_max_ms": round(float(after.max()), 1),
        "delay_p99_ms_before_kill": round(float(np.percentile(before, 99)), 1),
        "lost_events": lost,
        "double_counted_events": double,
        "survivor_exit_code": codes[0],
    }


KILL_KEYS = (
    "rebalance_gap_p99_ms",
    "delay_p99_ms_before_kill",
    "lost_events",
    "double_counted_events",
)
"""The kill phase's figures that the bench's JSON line carries at top level."""
