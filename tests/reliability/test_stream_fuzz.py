"""Fuzzed events into the stream processor.

Validation level (fast, many cases, hypothesis): whatever the bytes, ``validate`` either
returns an event the processor can store (ids non-empty, bounded, no control characters,
encodable UTF-8; a known type; a timestamp in range; a finite numeric value, never a
boolean) or raises ``InvalidInput`` naming a field with a reason — nothing else escapes.

Integration (the real broker, ``rtrec stream run``): random bytes, huge fields, odd
unicode, bad numbers, wrong JSON types and deep nesting mixed with good events: every bad
one is dead-lettered with its reason and original bytes, the good ones (odd but valid
unicode ids included) reach the online features, and the processor is alive afterwards.
"""

from __future__ import annotations

import json
import math
import random
import signal
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtrec.config import Settings
from rtrec.errors import InvalidInput
from rtrec.events import EVENT_TYPES, MAX_FUTURE_MS
from streaming.validate import Event, validate
from tests.stream_helpers import (
    assert_online_equals,
    dead_letters,
    env,
    isolated,
    reference,
    start_processor,
    wait_applied,
    wait_for,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

NOW = 1_750_000_000_000
GOOD = {"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": NOW - 5}
ODD = ["\u202e", "\u200f", "\x00", "\ud800", "\udfff", "\U0001f600", "\ufeff", "\u0301", "\n"]

odd_text = st.one_of(
    st.text(max_size=40),  # any code point, lone surrogates included
    st.text(alphabet=st.sampled_from([*ODD, "a", "é"]), min_size=1, max_size=12),
    st.sampled_from(["", "a" * 128, "a" * 129, "x" * 20_000, "\U0001f600" * 40]),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities included
    st.sampled_from([NOW, NOW + MAX_FUTURE_MS + 1, -1, 0, 1e308, -0.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)
    ),
    max_leaves=12,
)
events = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.one_of(odd_text, json_values),
        "item_id": st.one_of(odd_text, json_values),
        "event_type": st.one_of(st.sampled_from([*EVENT_TYPES, "VIEW", "like"]), json_values),
        "ts": st.one_of(numbers, st.booleans(), odd_text, json_values),
        "value": st.one_of(numbers, st.booleans(), odd_text, json_values),
        "context": json_values,
        "extra": json_values,
    },
)


def _encode(payload: object, ascii_only: bool) -> bytes:
    """JSON as a producer might write it: escaped, or raw UTF-8 (lone surrogates as the
    invalid bytes a sloppy encoder emits)."""
    return json.dumps(payload, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _deep(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    inner = b'{"a": ' * depth + b"1" + b"}" * depth
    return _encode({**GOOD, "context": "x"}, True)[:-1] + b', "deep": ' + inner + b"}"


def check(raw: bytes) -> Event | InvalidInput:
    """``validate`` judged by what the processor needs from it."""
    try:
        e = validate(raw, NOW)
    except InvalidInput as exc:
        assert exc.field and str(exc), raw[:100]
        return exc
    for ident in (e.user_id, e.item_id):
        assert type(ident) is str and 0 < len(ident) <= 128
        assert min(ident) >= " "
        ident.encode()  # storable: no lone surrogates
    assert e.event_type in EVENT_TYPES
    assert type(e.ts) is int and 0 <= e.ts <= NOW + MAX_FUTURE_MS
    assert e.value is None or (type(e.value) is float and math.isfinite(e.value))
    assert e.event_type != "rating" or e.value is not None
    return e


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_are_valid_or_named(raw: bytes) -> None:
    check(raw)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.booleans())
def test_fuzzed_events_are_valid_or_named(payload: dict, ascii_only: bool) -> None:
    _check_types(payload, check(_encode(payload, ascii_only)))


fields = st.sampled_from(["user_id", "item_id", "event_type", "ts", "value", "context"])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields, st.one_of(scalars, json_values), st.booleans())
def test_one_odd_field_in_a_good_event(field: str, value: object, ascii_only: bool) -> None:
    payload = {**GOOD, field: value}
    got = check(_encode(payload, ascii_only))
    _check_types(payload, got)
    if isinstance(got, Event) and field in ("user_id", "item_id"):
        assert getattr(got, field) == value  # accepted ids are kept exactly


def _check_types(payload: dict, got: Event | InvalidInput) -> None:
    """Booleans are never numbers; a timestamp must be a number or a date string."""
    ts = payload.get("ts")
    if isinstance(payload.get("value"), bool) or ts is None or isinstance(ts, bool | list | dict):
        assert isinstance(got, InvalidInput), payload


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=20_000), st.sampled_from(["array", "object"]))
def test_deep_nesting_is_rejected_not_a_crash(depth: int, kind: str) -> None:
    check(_deep(depth, kind))


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@pytest.mark.parametrize("flag", [True, False])
def test_boolean_value_is_not_a_number(event_type: str, flag: bool) -> None:
    raw = json.dumps({**GOOD, "event_type": event_type, "value": flag}).encode()
    with pytest.raises(InvalidInput) as info:
        validate(raw, NOW)
    assert info.value.field == "value"


def _bad_payloads(seed: int) -> dict[str, bytes | None]:
    rng = random.Random(seed)
    ev = {**GOOD, "ts": 1_700_000_000_000}
    bad: dict[str, bytes | None] = {
        f"random_{k}": bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        for k in range(6)
    }
    bad |= {
        "empty": b"",
        "tombstone": None,
        "json_null": b"null",
        "top_level_array": b"[1, 2, 3]",
        "huge_item": _encode({**ev, "item_id": "x" * 100_000}, True),
        "long_user": _encode({**ev, "user_id": "u" * 129}, True),
        "lone_surrogate_escaped": _encode({**ev, "user_id": "u\ud800"}, True),
        "lone_surrogate_bytes": _encode({**ev, "user_id": "u\ud800"}, False),
        "nul_in_id": _encode({**ev, "item_id": "i\x00"}, True),
        "newline_in_id": _encode({**ev, "user_id": "u\n"}, True),
        "negative_ts": _encode({**ev, "ts": -1}, True),
        "nan_value": _encode({**ev, "event_type": "rating", "value": float("nan")}, True),
        "inf_ts": _encode({**ev, "ts": float("inf")}, True),
        "huge_ts": _encode({**ev, "ts": 10**30}, True),
        "false_value": _encode({**ev, "event_type": "rating", "value": False}, True),
        "true_value": _encode({**ev, "event_type": "purchase", "value": True}, True),
        "string_value": _encode({**ev, "event_type": "rating", "value": "5"}, True),
        "ts_list": _encode({**ev, "ts": [1]}, True),
        "user_object": _encode({**ev, "user_id": {"id": 1}}, True),
        "user_number": _encode({**ev, "user_id": 42}, True),
        "bool_ts": _encode({**ev, "ts": True}, True),
        "deep_array": _deep(16_000, "array"),
        "deep_object": _deep(3_000, "object"),
        "unknown_field": _encode({**ev, "admin": True}, True),
        "context_too_big": _encode({**ev, "context": {str(k): k for k in range(40)}}, True),
    }
    return bad


def test_fuzzed_stream_dead_letters_bad_events_and_goes_on(stack: Settings, tmp_path: Path) -> None:
    from kafka import KafkaProducer

    from features import online_features

    s = isolated(stack, tmp_path)
    bad = _bad_payloads(seed=8)
    users = ["plain"] * 5 + ["\u202eرتل", "\U0001f600\u200d\U0001f525", "é\u0301"]
    good = [
        {**GOOD, "user_id": u, "item_id": f"i{k % 7}", "ts": 1_700_000_000_000 + k}
        for k, u in enumerate(users)
    ]
    good.append({**GOOD, "user_id": "rater", "event_type": "rating", "value": 4.5, "ts": 1})
    rng = random.Random(3)
    mixed = [(e["user_id"].encode(), json.dumps(e).encode()) for e in good]
    for value in bad.values():  # bad ones anywhere; the good ones keep their time order
        mixed.insert(rng.randrange(len(mixed) + 1), (b"bad", value))
    producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers, max_request_size=2**20)
    proc = start_processor(s, env(s))
    try:
        for key, value in mixed:
            producer.send(s.kafka.events_topic, key=key, value=value)
        producer.flush()
        wait_applied(s, len(mixed), timeout=90)  # every record passed the processor
        assert proc.poll() is None, "the processor died on a fuzzed event"
        late = {**GOOD, "user_id": "late", "ts": 1_700_000_000_000}
        producer.send(s.kafka.events_topic, key=b"late", value=json.dumps(late).encode())
        producer.flush()
        wait_for(
            lambda: online_features(s, ["late"])[0]["recent_items"] == ["i1"],
            60,
            "an event after the fuzz processed",
        )
    finally:
        producer.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
    assert_online_equals(s, reference(pd.DataFrame([*good, late])))
    letters = dead_letters(s)
    assert all(d["reason"] and d["source"].startswith(s.kafka.events_topic) for d in letters)
    got = {d["value"] if d["value"] is None else bytes(d["value"]) for d in letters}
    assert got == set(bad.values())  # every bad event, with its original bytes
    assert len(letters) >= len(bad)  # at least once


def test_a_record_validation_did_not_foresee_is_dead_lettered_not_a_crash(
    stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception out of validation (a bug, a library surprise) dead-letters that one
    record with the exception named; a crash would repeat on the same record forever."""

    import streaming.processor as processor_mod
    from streaming import publish

    s = isolated(stack, tmp_path)
    poison = json.dumps({**GOOD, "user_id": "poison"}).encode()
    real = processor_mod.validate

    def flaky(raw: bytes, now_ms: int, **kw: object) -> Event:
        if raw == poison:
            raise RuntimeError("surprise")
        return real(raw, now_ms, **kw)

    monkeypatch.setattr(processor_mod, "validate", flaky)
    good = [{**GOOD, "user_id": f"u{k}", "ts": NOW - 10 + k} for k in range(3)]
    pairs = [(e["user_id"].encode(), json.dumps(e).encode()) for e in good]
    publish(s, [*pairs[:2], (b"poison", poison), pairs[2]], progress=False)
    total = processor_mod.StreamProcessor(s).run(max_idle_s=2)
    assert (total.applied, total.dead) == (3, 1)
    assert_online_equals(s, reference(pd.DataFrame(good)))
    letters = dead_letters(s)
    assert [bytes(d["value"]) for d in letters] == [poison]
    assert "RuntimeError: surprise" in letters[0]["reason"]
