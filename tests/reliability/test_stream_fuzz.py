"""Fuzzed events into the stream processor: only invalid events are rejected.

Validation level (fast, many cases, hypothesis): whatever the bytes, ``validate`` either
returns an event the processor can store (ids non-empty, bounded, no control characters,
encodable UTF-8; a known type; a timestamp in range; a finite numeric value, never a
boolean) or raises ``InvalidInput`` naming a field with a reason — nothing else escapes.
Events built field by field from the contract, each field valid or broken in a known
way, are judged exactly: accepted (with their values kept) iff every field is valid,
else rejected naming one of the broken fields.

Integration (the real broker, ``rtrec stream run``): random bytes, huge fields, odd
unicode, bad numbers, wrong JSON types and deep nesting mixed with valid events of every
shape the contract allows: each bad one is dead-lettered with its original bytes and the
field it breaks, every valid one is applied (the processor's own counters and the online
features agree), and the processor is alive afterwards.
"""

from __future__ import annotations

import json
import math
import random
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from rtrec.streaming.validate import Event, validate

from rtrec.config import Settings
from rtrec.errors import InvalidInput
from rtrec.events import EVENT_TYPES, MAX_EVENT_BYTES, MAX_FUTURE_MS
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
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
@example("user_id", "\ud800\udfff", True)  # a surrogate pair, escaped: one character
@example("user_id", "\ud800\udfff", False)  # the same as raw CESU-8 bytes: not UTF-8
def test_one_odd_field_in_a_good_event(field: str, value: object, ascii_only: bool) -> None:
    payload = {**GOOD, field: value}
    got = check(_encode(payload, ascii_only))
    _check_types(payload, got)
    if isinstance(got, Event) and field in ("user_id", "item_id"):
        # Accepted ids are kept exactly as the JSON text spells them. That is the generated
        # string itself, except where it holds a high and a low surrogate in a row: escaped
        # (``"\ud800\udfff"``), JSON reads those as one character (RFC 8259, section 7).
        assert getattr(got, field) == json.loads(json.dumps(value))


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


# Events built from the contract (rtrec.events), one field at a time: each field is drawn
# valid (every shape the contract allows, odd but legal text included) or broken in a
# known way, so the verdict is known before ``validate`` runs.
LIMIT = NOW + MAX_FUTURE_MS
REQUIRED = ("user_id", "item_id", "event_type", "ts")
legal_char = st.characters(min_codepoint=0x20, exclude_categories=("Cs",))
ODD_LEGAL = ["\u202eرتل", "\U0001f600\u200d\U0001f525", "e\u0301", "\ufeff", "\x7f", " ", "a" * 128]
valid_id = st.one_of(st.text(legal_char, min_size=1, max_size=128), st.sampled_from(ODD_LEGAL))
invalid_id = st.one_of(
    st.just(""),
    st.text(legal_char, min_size=129, max_size=200),
    st.tuples(st.text(legal_char, max_size=5), st.characters(max_codepoint=0x1F)).map("".join),
    st.tuples(st.text(legal_char, max_size=5), st.characters(categories=("Cs",))).map("".join),
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
whole_seconds = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime.fromtimestamp(LIMIT // 1000 - 1, UTC).replace(tzinfo=None),
).map(lambda d: d.replace(microsecond=0, tzinfo=UTC))
valid_ts = st.one_of(
    st.integers(0, LIMIT),
    st.sampled_from([0, NOW, LIMIT]),
    # ISO 8601 is accepted too (whole seconds: a fractional ms can round either way).
    whole_seconds.map(lambda d: d.isoformat()),
    whole_seconds.map(lambda d: d.isoformat().replace("+00:00", "Z")),
)
invalid_ts = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(max_value=-1),
    st.integers(min_value=LIMIT + 1),
    st.integers(-(10**12), 10**12).map(lambda i: i + 0.5),
    st.floats(-1e9, 1e9).filter(lambda f: not f.is_integer()),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.text(alphabet="abcxyz :-", max_size=12),
    st.just("1969-12-31T23:59:59Z"),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
valid_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53)
)
invalid_value = st.one_of(
    st.booleans(),
    st.text(max_size=5),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
context_key = st.text(legal_char, max_size=64)
context_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    valid_value,
    st.text(legal_char, max_size=20),
)
valid_context = st.dictionaries(context_key, context_value, max_size=32)
invalid_context = st.one_of(
    st.lists(st.integers(), max_size=2),
    st.text(max_size=5),
    st.integers(),
    st.booleans(),
    st.dictionaries(context_key, context_value, min_size=33, max_size=40),
    st.dictionaries(
        st.text(legal_char, min_size=65, max_size=80), context_value, min_size=1, max_size=2
    ),
    st.dictionaries(
        context_key,
        st.one_of(
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        ),
        min_size=1,
        max_size=2,
    ),
)
FIELDS = {
    "user_id": (valid_id, invalid_id),
    "item_id": (valid_id, invalid_id),
    "event_type": (
        st.sampled_from(EVENT_TYPES),
        st.one_of(
            st.text(max_size=12).filter(lambda t: t not in EVENT_TYPES),
            st.sampled_from(["VIEW", "Click", "like", ""]),
            st.none(),
            st.integers(),
            st.lists(st.just("view"), max_size=1),
        ),
    ),
    "ts": (valid_ts, invalid_ts),
    "value": (valid_value, invalid_value),
    "context": (valid_context, invalid_context),
}


@st.composite
def labelled_events(draw: st.DrawFn) -> tuple[dict, set[str]]:
    """(payload, the fields it breaks): empty for a valid event (about half of them)."""
    to_break = draw(
        st.one_of(st.just(set()), st.sets(st.sampled_from([*FIELDS, "<extra>"]), min_size=1))
    )
    payload: dict = {}
    broken: set[str] = set()
    for name, (good, bad) in FIELDS.items():
        if name in to_break:
            if name in REQUIRED and draw(st.booleans()):
                broken.add(name)  # missing
                continue
            payload[name] = draw(bad)
            broken.add(name)
        elif name in REQUIRED or draw(st.booleans()):  # optional fields may be absent
            payload[name] = draw(st.none() if name == "context" and draw(st.booleans()) else good)
    if payload.get("event_type") == "rating" and payload.get("value") is None:
        broken.add("value")  # a rating needs its value
    if "<extra>" in to_break:
        extra = draw(st.text(legal_char, min_size=1, max_size=8).filter(lambda k: "." not in k))
        if extra not in FIELDS:
            payload[extra] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=3)))
            broken.add(extra)  # unknown field
    return payload, broken


def expected_ts(ts: int | str) -> int:
    if isinstance(ts, int):
        return ts
    return (datetime.fromisoformat(ts.replace("Z", "+00:00")) - EPOCH) // timedelta(milliseconds=1)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labelled_events(), st.booleans())
def test_only_invalid_events_are_rejected(
    labelled: tuple[dict, set[str]], ascii_only: bool
) -> None:
    payload, broken = labelled
    raw = _encode(payload, ascii_only)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:  # lone surrogates written raw: not UTF-8 at all
        broken = {"<payload>"}
    if len(raw) > MAX_EVENT_BYTES:
        broken = {"<payload>"}
    got = check(raw)
    event("valid" if not broken else f"broken: {len(broken)} field(s)")
    if not broken:
        assert isinstance(got, Event), (payload, got)
        value = payload.get("value")
        assert got == Event(
            payload["user_id"],
            payload["item_id"],
            payload["event_type"],
            expected_ts(payload["ts"]),
            None if value is None else float(value),
        )
    else:
        assert isinstance(got, InvalidInput), (payload, broken)
        assert got.field is not None and got.field.split(".")[0] in broken, (got.field, broken)


NOT_JSON = frozenset({"<payload>", "<json>"})


def _bad_payloads(seed: int) -> dict[str, tuple[bytes | None, frozenset[str]]]:
    """Name -> (bytes on the wire, the fields a dead letter may name for them)."""
    rng = random.Random(seed)
    ev = {**GOOD, "ts": 1_700_000_000_000}

    def bad(payload: object, *fields: str, ascii_only: bool = True) -> tuple[bytes, frozenset]:
        return _encode(payload, ascii_only), frozenset(fields)

    out: dict[str, tuple[bytes | None, frozenset[str]]] = {
        f"random_{k}": (bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), NOT_JSON)
        for k in range(6)
    }
    out |= {
        "empty": (b"", frozenset({"<json>"})),
        "tombstone": (None, frozenset({"<json>"})),
        "json_null": (b"null", frozenset({"<json>"})),
        "top_level_array": (b"[1, 2, 3]", frozenset({"<json>"})),
        "huge_item": bad({**ev, "item_id": "x" * 100_000}, "<payload>"),
        "long_user": bad({**ev, "user_id": "u" * 129}, "user_id"),
        "lone_surrogate_escaped": bad({**ev, "user_id": "u\ud800"}, "user_id"),
        "lone_surrogate_bytes": bad({**ev, "user_id": "u\ud800"}, "<payload>", ascii_only=False),
        "nul_in_id": bad({**ev, "item_id": "i\x00"}, "item_id"),
        "newline_in_id": bad({**ev, "user_id": "u\n"}, "user_id"),
        "empty_item": bad({**ev, "item_id": ""}, "item_id"),
        "missing_user": bad({k: v for k, v in ev.items() if k != "user_id"}, "user_id"),
        "unknown_type": bad({**ev, "event_type": "VIEW"}, "event_type"),
        "negative_ts": bad({**ev, "ts": -1}, "ts"),
        "fractional_ts": bad({**ev, "ts": 1_700_000_000_000.5}, "ts"),
        "pre_epoch_iso_ts": bad({**ev, "ts": "1969-12-31T23:59:59Z"}, "ts"),
        "nan_value": bad({**ev, "event_type": "rating", "value": float("nan")}, "value"),
        "inf_ts": bad({**ev, "ts": float("inf")}, "ts"),
        "huge_ts": bad({**ev, "ts": 10**30}, "ts"),
        "rating_without_value": bad({**ev, "event_type": "rating"}, "value"),
        "false_value": bad({**ev, "event_type": "rating", "value": False}, "value"),
        "true_value": bad({**ev, "event_type": "purchase", "value": True}, "value"),
        "string_value": bad({**ev, "event_type": "rating", "value": "5"}, "value"),
        "ts_list": bad({**ev, "ts": [1]}, "ts"),
        "user_object": bad({**ev, "user_id": {"id": 1}}, "user_id"),
        "user_number": bad({**ev, "user_id": 42}, "user_id"),
        "bool_ts": bad({**ev, "ts": True}, "ts"),
        "deep_array": (_deep(16_000, "array"), frozenset({"<payload>"})),  # 32 KB
        "deep_small_array": (_deep(8_000, "array"), frozenset({"<json>"})),  # recursion
        "deep_object": (_deep(3_000, "object"), frozenset({"<payload>"})),
        "unknown_field": bad({**ev, "admin": True}, "admin"),
        "context_too_big": bad({**ev, "context": {str(k): k for k in range(40)}}, "context"),
        "context_nested": bad({**ev, "context": {"a": {"b": 1}}}, "context"),
    }
    return out


def _good_events() -> list[dict]:
    """Valid events of every shape the contract allows (odd but legal ids, ISO time,
    numbers where a float is expected, a context), keyed by distinct users in time order."""
    t = 1_700_000_000_000
    users = ["plain"] * 5 + ["\u202eرتل", "\U0001f600\u200d\U0001f525", "é\u0301", "u" * 128]
    good = [
        {**GOOD, "user_id": u, "item_id": f"i{k % 7}", "ts": t + k} for k, u in enumerate(users)
    ]
    return [
        *good,
        {**GOOD, "user_id": "rater", "event_type": "rating", "value": 4.5, "ts": 1},
        {**GOOD, "user_id": "buyer", "event_type": "purchase", "value": 20, "ts": t + 20},
        {**GOOD, "user_id": "cart", "event_type": "add_to_cart", "value": None, "ts": t + 21},
        {**GOOD, "user_id": "iso", "event_type": "view", "ts": "2023-11-14T22:13:21Z"},
        {
            **GOOD,
            "user_id": "ctx",
            "item_id": "i" * 128,
            "ts": t + 22,
            "context": {"device": "ios", "n": 2, "ok": True, "none": None, "r": 0.5},
        },
        {**GOOD, "user_id": "\x7f\u00a0 ", "ts": t + 23},
    ]


def _counted(metrics_text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "rtrec_stream_events"
        for sample in family.samples
        if sample.name == "rtrec_stream_events_total"
    }


def test_fuzzed_stream_dead_letters_bad_events_and_goes_on(stack: Settings, tmp_path: Path) -> None:
    import httpx
    from kafka import KafkaProducer
    from rtrec.features import online_features

    from tests.conftest import free_port

    s = isolated(stack, tmp_path)
    bad = _bad_payloads(seed=8)
    good = _good_events()
    for e in good:  # the fixture itself must be valid, or the test proves nothing
        assert isinstance(validate(json.dumps(e).encode(), NOW), Event), e
    rng = random.Random(3)
    mixed = [(e["user_id"].encode(), json.dumps(e).encode()) for e in good]
    for value, _ in bad.values():  # bad ones anywhere; the good ones keep their time order
        mixed.insert(rng.randrange(len(mixed) + 1), (b"bad", value))
    producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers, max_request_size=2**20)
    port = free_port()
    proc = start_processor(s, env(s), "--metrics-port", str(port))
    late = {**GOOD, "user_id": "late", "ts": 1_700_000_000_000}
    try:
        for key, value in mixed:
            producer.send(s.kafka.events_topic, key=key, value=value)
        producer.flush()
        wait_applied(s, len(mixed), timeout=90)  # every record passed the processor
        assert proc.poll() is None, "the processor died on a fuzzed event"
        producer.send(s.kafka.events_topic, key=b"late", value=json.dumps(late).encode())
        producer.flush()
        wait_for(
            lambda: online_features(s, ["late"])[0]["recent_items"] == ["i1"],
            60,
            "an event after the fuzz processed",
        )
        counted = _counted(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    finally:
        producer.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
    # The processor's own count: every valid event applied, every invalid one rejected.
    assert counted == {"applied": len(good) + 1, "redelivered": 0, "dead_lettered": len(bad)}
    as_ms = [{**e, "ts": expected_ts(e["ts"])} for e in [*good, late]]
    assert_online_equals(s, reference(pd.DataFrame(as_ms)))  # each valid one in the features
    letters = dead_letters(s)
    assert all(d["reason"] and d["source"].startswith(s.kafka.events_topic) for d in letters)
    fields = {d["value"] if d["value"] is None else bytes(d["value"]): d["field"] for d in letters}
    assert set(fields) == {value for value, _ in bad.values()}  # original bytes, only bad ones
    for name, (value, allowed) in bad.items():
        assert (fields[value] or "").split(".")[0] in allowed, (name, fields[value], allowed)
    assert len(letters) >= len(bad)  # at least once


def test_a_record_validation_did_not_foresee_is_dead_lettered_not_a_crash(
    stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception out of validation (a bug, a library surprise) dead-letters that one
    record with the exception named; a crash would repeat on the same record forever."""

    import rtrec.streaming.batch as batch_mod  # where validation is called
    from rtrec.streaming import publish
    from rtrec.streaming.processor import StreamProcessor

    s = isolated(stack, tmp_path)
    poison = json.dumps({**GOOD, "user_id": "poison"}).encode()
    real = batch_mod.validate

    def flaky(raw: bytes, now_ms: int, **kw: object) -> Event:
        if raw == poison:
            raise RuntimeError("surprise")
        return real(raw, now_ms, **kw)

    monkeypatch.setattr(batch_mod, "validate", flaky)
    good = [{**GOOD, "user_id": f"u{k}", "ts": NOW - 10 + k} for k in range(3)]
    pairs = [(e["user_id"].encode(), json.dumps(e).encode()) for e in good]
    publish(s, [*pairs[:2], (b"poison", poison), pairs[2]], progress=False)
    total = StreamProcessor(s).run(max_idle_s=2)
    assert (total.applied, total.dead) == (3, 1)
    assert_online_equals(s, reference(pd.DataFrame(good)))
    letters = dead_letters(s)
    assert [bytes(d["value"]) for d in letters] == [poison]
    assert "RuntimeError: surprise" in letters[0]["reason"]
