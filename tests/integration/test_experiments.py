"""Impressions and feedback on the real broker, joined by the processor's experiment join
into Redis, read back by ``rtrec experiment status --json`` and from the offline store."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from kafka import KafkaProducer
from rtrec.serving.impression_sender import impression
from rtrec.streaming import ExperimentJoin, arm_user_key, experiment_keys, read_arm_rows
from rtrec.streaming.attribution import Tally, attribute
from rtrec.streaming.experiment_state import ExperimentState

from rtrec.app import stack as stack_mod
from rtrec.app.cli import main
from rtrec.config import Settings, get_settings
from rtrec.events import pack_impressions
from rtrec.logging import redact_id
from tests.stream_helpers import env, isolated, processor_log, start_processor, wait_for

pytestmark = pytest.mark.integration

EXP = "7-vs-8"
T0 = int(time.time() * 1000) - 3_600_000
WINDOW = 1_800_000


def answer(rid: str, user: str, variant: str, items: list[str]) -> tuple:
    body = {
        "request_id": rid,
        "user_id_hash": redact_id(user),
        "variant": variant,
        "experiment": EXP,
        "model_version": "7" if variant == "champion" else "8",
        "items": [{"item_id": i, "score": 1.0} for i in items],
        "fallback": False,
    }
    return (T0, user, len(items), None, body)


def feedback(user: str, item: str, ts: int, etype: str = "click", rid: str | None = None) -> bytes:
    body: dict[str, Any] = {"user_id": user, "item_id": item, "event_type": etype, "ts": ts}
    if rid:
        body["request_id"] = rid
    return json.dumps(body).encode()


@pytest.fixture
def s(stack: Settings, tmp_path: Path) -> Settings:
    out = isolated(stack, tmp_path)
    out.kafka.impressions_topic = f"imp-{uuid.uuid4().hex[:6]}"
    out.serving.ab_challenger_share = 0.5
    stack_mod.ensure_topics(out)
    return out


def publish(s: Settings) -> None:
    """Feedback first (its answers' impressions are read later), then the impressions."""
    r1, r2 = uuid.uuid4().hex, uuid.uuid4().hex
    producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers)
    for user, value in (
        ("u1", feedback("u1", "b", T0 + 1000)),  # inferred: u1's latest answer showing b
        ("u1", feedback("u1", "b", T0 + 2000, "purchase")),
        ("u2", feedback("u2", "e", T0 + 500, rid=r2)),  # named answer, position 2
        ("u2", feedback("u2", "d", T0 + WINDOW + 1)),  # past the window: unattributed
        ("u3", feedback("u3", "x", T0)),  # no answer at all: unattributed
        ("u3", feedback("u3", "x", T0, "view")),  # not an outcome
    ):
        producer.send(s.kafka.events_topic, key=user.encode(), value=value)
    batch = [  # one record, two users' answers: as the service sends them
        impression(answer(r1, "u1", "champion", ["a", "b", "c"])),
        impression(answer(r2, "u2", "challenger", ["d", "e"])),
    ]
    producer.send(s.kafka.impressions_topic, value=pack_impressions(batch))
    producer.flush()
    producer.close()


def cli(s: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """``rtrec experiment status ARGS`` on ``s`` (its settings for this call only)."""
    for name, value in env(s).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RTREC_SERVING__AB_CHALLENGER_SHARE", "0.5")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["experiment", "status", *args])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return result.output


def cli_status(s: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return json.loads(cli(s, monkeypatch, "--json"))


def test_impressions_and_feedback_become_arm_aggregates(
    s: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(s)
    join = ExperimentJoin(s)
    runner = threading.Thread(target=join.run, daemon=True)
    runner.start()
    try:
        # six events and one record of impressions
        wait_for(lambda: join.committed >= 7, 90, "the join did not read every record")
    finally:
        join.stop()
        runner.join(30)
    out = cli_status(s, monkeypatch)
    assert out["unattributed"] == {"click": 2}
    [exp] = out["experiments"]
    assert exp["experiment"] == EXP and exp["verdict"] == "collecting"
    champion, challenger = exp["variants"]["champion"], exp["variants"]["challenger"]
    assert (champion["impressions"], champion["users"], champion["clicks"]) == (1, 1, 1)
    assert (champion["purchases"], champion["mrr"]) == (1, 0.5)
    assert champion["ctr_per_impression"]["rate"] == champion["ctr_per_user"]["rate"] == 1.0
    assert (challenger["clicks"], challenger["mrr"], challenger["clicked_impressions"]) == (
        1,
        0.5,
        1,
    )
    assert exp["lift"]["estimate"] == 0.0 and exp["p_value"] == 1.0
    assert 0.0 < champion["ctr_per_impression"]["low"] < 1.0  # a Wilson interval, not a point
    table = cli(s, monkeypatch)
    assert f"experiment {EXP}: collecting" in table and "unattributed outcomes: click 2" in table
    offline = read_arm_rows(s).set_index("variant")
    assert offline.loc["champion", "impressions"] == 1 and offline.loc["champion", "purchase"] == 1
    assert offline.loc["challenger", "clicking_users"] == 1


def test_rtrec_stream_run_joins_impressions_beside_the_features(
    s: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {**env(s), "RTREC_KAFKA__IMPRESSIONS_TOPIC": s.kafka.impressions_topic}
    proc = start_processor(s, extra)
    try:
        publish(s)

        def joined() -> bool:
            exps = cli_status(s, monkeypatch)["experiments"]
            return bool(exps) and exps[0]["variants"]["champion"]["purchases"] == 1

        wait_for(joined, 120, "rtrec stream run did not join the impressions")
    except AssertionError:
        raise AssertionError(processor_log(s)) from None
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0, processor_log(s)
    assert cli_status(s, monkeypatch)["unattributed"] == {"click": 2}


def test_a_batch_committed_twice_counts_once(s: Settings) -> None:
    """The commit is fenced on the applied offsets it read: a second commit of the same
    batch (a redelivery after a crash between commit and progress) writes nothing."""
    client = redis.Redis.from_url(s.redis.url)
    state = ExperimentState(s, client, token="t1")
    assert state.hold_lease(10_000)
    records = [
        _record(
            s.kafka.impressions_topic, 0, impression(answer("a" * 32, "u9", "champion", ["i"]))
        ),
        _record(s.kafka.events_topic, 0, json.loads(feedback("u9", "i", T0 + 5))),
    ]

    def fold() -> Tally:
        return attribute(
            records,
            load=lambda users: (state.applied(), {}),
            impressions_topic=s.kafka.impressions_topic,
            window_ms=WINDOW,
            now_ms=int(time.time() * 1000),
        )

    first, again = fold(), fold()
    rows = state.commit(first, applied=first.applied, states={}, ttl_s=60)
    assert rows is not None and rows[0][2]["impressions"] == 1 and rows[0][2]["click"] == 1
    assert again.applied == {} and state.commit(again, applied={}, states={}, ttl_s=60) is None
    redelivered = fold()  # read after the commit: everything is at or below the offsets
    assert redelivered.skipped == 2 and redelivered.arms == {}
    other = ExperimentState(s, client, token="t2")  # another member without the lease
    assert not other.hold_lease(10_000)
    assert other.commit(redelivered, applied=redelivered.applied, states={}, ttl_s=60) is None
    prefix = experiment_keys(s)["prefix"]
    counters = client.hgetall(prefix + f":arm:{EXP}:champion")
    assert counters[b"impressions"] == b"1" and counters[b"click"] == b"1"
    assert [counters[k] for k in (b"sum_nn", b"sum_xx", b"sum_nx")] == [b"1", b"1", b"1"]

    # A later batch: the same user's second answer, not clicked. The user's counts go to
    # (2, 1) and the arm's sums of squares and products follow (4, 1, 2), once.
    later = [
        _record(s.kafka.impressions_topic, 1, impression(answer("b" * 32, "u9", "champion", ["j"])))
    ]
    tally = attribute(
        later,
        load=lambda users: (state.applied(), {}),
        impressions_topic=s.kafka.impressions_topic,
        window_ms=WINDOW,
        now_ms=int(time.time() * 1000),
    )
    assert state.commit(tally, applied=tally.applied, states={}, ttl_s=60) is not None
    assert state.commit(tally, applied=tally.applied, states={}, ttl_s=60) is None  # fenced
    counters = client.hgetall(prefix + f":arm:{EXP}:champion")
    assert [counters[k] for k in (b"sum_nn", b"sum_xx", b"sum_nx")] == [b"4", b"1", b"2"]
    user = redact_id("u9").encode()
    assert client.hgetall(arm_user_key(prefix, EXP, "champion")) == {
        user + b"|n": b"2",
        user + b"|x": b"1",
    }


def _record(topic: str, offset: int, body: dict[str, Any]) -> Any:
    """A consumer record: an impression goes in a batch of one, an event as it is."""
    from types import SimpleNamespace

    if topic.startswith("imp-"):
        return SimpleNamespace(
            topic=topic, partition=0, offset=offset, key=None, value=pack_impressions([body])
        )
    return SimpleNamespace(
        topic=topic, partition=0, offset=offset, key=b"u9", value=json.dumps(body).encode()
    )
