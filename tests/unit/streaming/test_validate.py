"""The fast validation path accepts exactly what the contract accepts, with the same values."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rtrec.streaming.validate import Event, validate

from rtrec.errors import InvalidInput
from rtrec.events import MAX_EVENT_BYTES, parse_event

NOW = 1_750_000_000_000
GOOD = {"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": NOW - 5}

ids = st.one_of(
    st.text(max_size=140),
    st.integers(),
    st.none(),
    st.sampled_from(["u1", "", "\x00x", "a" * 128, "a" * 129, "é", "\u202e"]),
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "user_id": ids,
        "item_id": ids,
        "event_type": st.one_of(
            st.sampled_from(["view", "click", "add_to_cart", "purchase", "rating", "like", ""]),
            st.integers(),
        ),
        "ts": st.one_of(
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.sampled_from([NOW, NOW + 86_400_000, NOW + 86_400_001, 0, -1, True]),
            st.floats(allow_nan=False, allow_infinity=False),
            st.sampled_from(["2025-01-01T00:00:00Z", "soon", "1700000000000"]),
        ),
        "value": st.one_of(
            st.none(),
            st.floats(allow_nan=False, allow_infinity=False),
            st.integers(),
            st.booleans(),
        ),
        "context": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.integers())),
        "request_id": st.one_of(
            st.none(),
            st.integers(),
            st.text(alphabet="0123456789abcdefABX", min_size=30, max_size=33),
            st.sampled_from(["0" * 32, "f" * 32, "F" * 32, "g" * 32, "a" * 31, ""]),
        ),
        "extra": st.integers(),
    },
)


def judge(raw: bytes) -> Event | str:
    try:
        e = parse_event(raw, now_ms=NOW)
    except InvalidInput as exc:
        return f"invalid:{exc.field}"
    return Event(e.user_id, e.item_id, e.event_type.value, e.ts, e.value, None, e.request_id)


def fast(raw: bytes) -> Event | str:
    try:
        return validate(raw, NOW)
    except InvalidInput as exc:
        return f"invalid:{exc.field}"


@settings(max_examples=600, deadline=None)
@given(payloads)
def test_fast_path_agrees_with_the_contract(payload: dict) -> None:
    raw = json.dumps(payload).encode()
    assert fast(raw) == judge(raw)


@pytest.mark.parametrize(
    "raw, field",
    [
        (b'{"user_id": "u1", ', "<json>"),
        (b"\xff\xfe\x00garbage", "<payload>"),
        (json.dumps({**GOOD, "item_id": "x" * (MAX_EVENT_BYTES + 1)}).encode(), "<payload>"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "item_id"}).encode(), "item_id"),
        (json.dumps({**GOOD, "ts": "soon"}).encode(), "ts"),
        (json.dumps({**GOOD, "event_type": "like"}).encode(), "event_type"),
        (json.dumps({**GOOD, "event_type": []}).encode(), "event_type"),
        (json.dumps({**GOOD, "event_type": {}}).encode(), "event_type"),
        (json.dumps({**GOOD, "ts": NOW + 10 * 86_400_000}).encode(), "ts"),
        (json.dumps({**GOOD, "event_type": "rating"}).encode(), "value"),
        (b"[1, 2]", "<json>"),
        (json.dumps({**GOOD, "request_id": "A" * 32}).encode(), "request_id"),
        (json.dumps({**GOOD, "request_id": "a" * 33}).encode(), "request_id"),
        (json.dumps({**GOOD, "request_id": 7}).encode(), "request_id"),
    ],
)
def test_malformed_kinds_name_their_field(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate(raw, NOW)
    assert info.value.field == field


def test_plain_event_and_iso_timestamp() -> None:
    assert validate(json.dumps(GOOD).encode(), NOW) == Event("u1", "i1", "click", NOW - 5, None)
    with_id = {**GOOD, "request_id": "0123456789abcdef" * 2}
    assert validate(json.dumps(with_id).encode(), NOW).request_id == with_id["request_id"]
    iso = {**GOOD, "ts": "2025-01-01T00:00:00Z", "context": {"device": "ios"}}
    assert validate(json.dumps(iso).encode(), NOW).ts == 1_735_689_600_000
