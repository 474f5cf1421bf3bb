"""Helpers shared by the stream processor tests (integration and reliability).

An isolated corner of the shared stack per test, the reference computed straight from
the events (independent of the processor), exactness checks of every store the
processor writes, and the real ``rtrec stream run`` subprocess.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rtrec.features import count_names, online_features
from rtrec.features.definitions import RECENT_ITEMS, WINDOWS
from rtrec.streaming import read_events

from rtrec.app import stack as stack_mod
from rtrec.config import Settings, load_settings
from tests.conftest import free_port

_db = itertools.cycle(range(1, 16))


def isolated(stack: Settings, tmp_path: Path) -> Settings:
    """Own topics, consumer group, Redis DB (emptied) and Feast repo on the shared stack."""
    import redis

    tag = uuid.uuid4().hex[:6]
    base = stack.redis.url.rsplit("/", 1)[0]
    s = load_settings(
        work_dir=tmp_path,
        kafka={
            "bootstrap_servers": stack.kafka.bootstrap_servers,
            "events_topic": f"ev-{tag}",
            "dlq_topic": f"dlq-{tag}",
            "alerts_topic": f"al-{tag}",
            "consumer_group": f"g-{tag}",
            "session_timeout_ms": 2000,
            "partitions": 3,
        },
        redis={"url": f"{base}/{next(_db)}"},
    )
    redis.Redis.from_url(s.redis.url).flushdb()
    stack_mod.ensure_topics(s)
    return s


@contextlib.contextmanager
def own_stack(tmp_path: Path) -> Iterator[Settings]:
    """A private broker and Redis (free ports, own work dir) that a test may restart
    without disturbing the session's stack; stopped afterwards."""
    s = load_settings(
        work_dir=tmp_path / "stack",
        kafka={
            "bootstrap_servers": f"127.0.0.1:{free_port()}",
            "session_timeout_ms": 2000,
            "partitions": 3,
        },
        redis={"url": f"redis://127.0.0.1:{free_port()}/0"},
    )
    try:
        bad = [r for r in stack_mod.up(s) if not r.healthy]
        assert not bad, f"private stack unhealthy: {bad}"
        yield s
    finally:
        stack_mod.down(s)


def reference(events: pd.DataFrame) -> dict[str, dict]:
    """User features computed straight from the events (independent of the processor)."""
    out = {}
    for user, g in events.sort_values("ts", kind="stable").groupby("user_id"):
        last = int(g["ts"].max())
        row = {"recent_items": g["item_id"].tolist()[::-1][:RECENT_ITEMS], "last_event_ms": last}
        for t in ("view", "click", "add_to_cart", "purchase", "rating"):
            for name, span in WINDOWS.items():
                row[f"cnt_{t}_{name}"] = int(
                    ((g["event_type"] == t) & (g["ts"] > last - span)).sum()
                )
        out[str(user)] = row
    return out


def online_differences(settings: Settings, ref: dict[str, dict]) -> list[str]:
    """Users whose online stream features differ from ``ref``."""
    users = sorted(ref)
    got = online_features(settings, users)
    keys = ["recent_items", "last_event_ms", *count_names()]
    return [u for u, g in zip(users, got, strict=True) if {k: g[k] for k in keys} != ref[u]]


def assert_online_equals(settings: Settings, ref: dict[str, dict]) -> None:
    bad = online_differences(settings, ref)
    if bad:
        got = online_features(settings, [bad[0]])[0]
        raise AssertionError(f"{len(bad)} users differ, e.g. {bad[0]}: {got} vs {ref[bad[0]]}")


def assert_items_exact(settings: Settings, events: pd.DataFrame) -> None:
    """Trending scores and item hour buckets count every event exactly once."""
    import redis
    from rtrec.features import TRENDING_EPOCH_KEY, TRENDING_KEY, trending_items, trending_weight
    from rtrec.streaming.aggregates import HOUR_MS, WINDOW_HOURS
    from rtrec.streaming.state import StateKeys

    keys = StateKeys.of(settings)
    client = redis.Redis.from_url(settings.redis.url)
    epoch, clock = int(client.get(TRENDING_EPOCH_KEY)), int(client.get(keys.clock))
    assert clock == int(events["ts"].max()) // HOUR_MS
    longest = max(WINDOW_HOURS)
    ref_scores = {}
    for item, g in events.groupby("item_id"):
        ref_scores[item] = sum(trending_weight(int(t), epoch) for t in g["ts"])
        assert client.zscore(TRENDING_KEY, item) == pytest.approx(ref_scores[item], rel=1e-9)
        buckets = client.hgetall(keys.item_prefix + item)
        got = sum(int(n) for h, n in buckets.items() if clock - int(h) < longest)
        assert got == int(((clock - g["ts"] // HOUR_MS) < longest).sum()), item
    top = sorted(ref_scores, key=ref_scores.__getitem__, reverse=True)[:5]
    assert trending_items(settings, 5) == top


def assert_offline_exact(settings: Settings, events: pd.DataFrame) -> pd.DataFrame:
    """After dropping crash repeats, the offline log holds each event exactly once:
    every offset of every partition once, and the same events as ``events``."""
    log = read_events(settings.offline_dir / "events")
    assert len(log) == len(events), (len(log), len(events))
    group = ["log_id", "partition"] if "log_id" in log.columns else ["partition"]
    by_part = log.groupby(group)["offset"]
    assert (by_part.nunique() == by_part.max() + 1).all()  # 0..max, none missing
    cols = ["user_id", "item_id", "event_type", "ts"]

    def rows(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
        typed = frame[cols].astype({"user_id": str, "item_id": str, "event_type": str})
        return sorted(typed.astype({"ts": "int64"}).itertuples(index=False, name=None))

    assert rows(log) == rows(events)
    return log


def env(s: Settings) -> dict[str, str]:
    """RTREC_* for a processor subprocess working on ``s``."""
    k = s.kafka
    return {
        "RTREC_WORK_DIR": str(s.work_dir),
        "RTREC_REDIS__URL": s.redis.url,
        "RTREC_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
        "RTREC_KAFKA__EVENTS_TOPIC": k.events_topic,
        "RTREC_KAFKA__DLQ_TOPIC": k.dlq_topic,
        "RTREC_KAFKA__ALERTS_TOPIC": k.alerts_topic,
        "RTREC_KAFKA__CONSUMER_GROUP": k.consumer_group,
        "RTREC_KAFKA__PARTITIONS": str(k.partitions),
        "RTREC_KAFKA__SESSION_TIMEOUT_MS": "2000",
    }


def start_processor(s: Settings, env_extra: dict[str, str], *args: str) -> subprocess.Popen:
    """``rtrec stream run`` as a real subprocess, logging to a file in the work dir."""
    full = {**os.environ, **env_extra}
    log = open(s.work_dir / f"processor-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "rtrec.app.cli", "--log-level", "INFO", "stream", "run", *args],
        env=full,
        stdout=log,
        stderr=log,
    )


def processor_log(s: Settings, lines: int = 25) -> str:
    """The newest processor log's last lines from rtrec's own loggers (for failures)."""
    logs = sorted(s.work_dir.glob("processor-*.log"))
    if not logs:
        return "(no processor log)"
    text = logs[-1].read_text(errors="replace").splitlines()
    return "\n".join([t for t in text if "streaming." in t or t.startswith("{")][-lines:])


def dead_letters(s: Settings) -> list[dict[str, Any]]:
    """Every record on the dead-letter topic, decoded (reason, source, original bytes)."""
    from kafka import KafkaConsumer
    from rtrec.streaming.dlq import decode

    consumer = KafkaConsumer(
        s.kafka.dlq_topic,
        bootstrap_servers=s.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    try:
        return [decode(r) for r in consumer]
    finally:
        consumer.close()


def applied_count(s: Settings) -> int:
    """Events the processor has applied (from its offsets in Redis)."""
    import redis
    from rtrec.streaming.processor import offsets_key

    applied = redis.Redis.from_url(s.redis.url).hgetall(offsets_key(s))
    return sum(int(v) + 1 for v in applied.values())


def logged_count(s: Settings) -> int:
    """Events recorded as written to the offline log (the processor's progress there)."""
    import redis
    from rtrec.streaming.state import state_keys

    done = redis.Redis.from_url(s.redis.url).hgetall(state_keys(s)["offline"])
    return sum(int(v) + 1 for v in done.values())


def wait_applied(s: Settings, n: int, timeout: float) -> None:
    wait_for(lambda: applied_count(s) >= n, timeout, f"processor did not reach {n} events")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until true (a liveness bound, not a performance assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:.0f} s")
