import json

import pytest

from rtrec.errors import InvalidInput
from rtrec.events import MAX_EVENT_BYTES, EventType, Interaction, ItemRecord, parse_event

NOW = 1_732_280_000_000
GOOD = {"user_id": "u1", "item_id": "i9", "event_type": "click", "ts": NOW - 1000}


def raw(**changes: object) -> bytes:
    data = {**GOOD, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def test_round_trip() -> None:
    event = parse_event(raw(context={"device": "ios", "pos": 3}), now_ms=NOW)
    assert event.event_type is EventType.CLICK
    again = parse_event(event.to_json(), now_ms=NOW)
    assert again == event


def test_iso_timestamp_accepted() -> None:
    event = parse_event(raw(ts="2024-11-22T12:00:00Z"), now_ms=NOW)
    assert event.ts == 1_732_276_800_000


@pytest.mark.parametrize(
    ("payload", "field", "fragment"),
    [
        (b"{not json", "<json>", "invalid JSON"),
        (b"\xff\xfe\x00garbage", "<payload>", "UTF-8"),
        (b"[1, 2]", "<json>", "JSON object"),
        (b"[" * 5000, "<json>", "nested too deeply"),
        (raw(item_id=...), "item_id", "missing"),
        (raw(user_id=""), "user_id", "at least 1"),
        (raw(user_id=123), "user_id", "string"),
        (raw(event_type="like"), "event_type", "unknown event type"),
        (raw(ts="yesterday"), "ts", "integer"),
        (raw(ts="1700000000000"), "ts", "ISO 8601"),
        (raw(ts="2024-11-22T12:00:00"), "ts", "time zone"),
        (raw(ts=-5), "ts", "greater than or equal"),
        (raw(ts=True), "ts", "boolean"),
        (raw(ts=NOW + 10 * 86_400_000), "ts", "future"),
        (raw(event_type="rating"), "value", "rating events need a value"),
        (raw(value=float("nan")), "value", "finite"),
        (raw(value="NaN"), "value", "valid number"),
        (raw(event_type="rating", value=False), "value", "valid number"),
        (raw(value=True), "value", "valid number"),
        (raw(colour="red"), "colour", "unknown field"),
        (raw(item_id="x" * (MAX_EVENT_BYTES + 1)), "<payload>", "exceeds"),
    ],
)
def test_invalid_events_name_the_field(payload: bytes, field: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_event(payload, now_ms=NOW)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_models_are_frozen_and_strict() -> None:
    event = Interaction.model_validate(GOOD)
    with pytest.raises(ValueError):
        event.user_id = "other"  # type: ignore[misc]
    item = ItemRecord(item_id="i1", categories=["drama", "comedy"])
    assert item.categories == ["drama", "comedy"]


def test_iso_times_convert_to_the_exact_millisecond() -> None:
    """Float arithmetic (``timestamp() * 1000``) lands one millisecond low for some
    values; every millisecond of a second must round-trip."""
    from datetime import UTC, datetime, timedelta

    base = datetime(2024, 11, 22, 12, 0, 0, tzinfo=UTC)
    for ms in range(1000):
        t = base + timedelta(milliseconds=ms)
        text = t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        event = parse_event(raw(ts=text), now_ms=NOW)
        assert event.ts == int(base.timestamp()) * 1000 + ms, text
    offset = parse_event(raw(ts="2024-11-22T13:00:00.001+01:00"), now_ms=NOW)
    assert offset.ts == int(base.timestamp()) * 1000 + 1


@pytest.mark.parametrize("field", ["user_id", "item_id", "context"])
def test_lone_surrogates_are_refused_where_they_arrive(field: str) -> None:
    payload = raw()
    text = json.loads(payload)
    text[field] = {"device": "\ud800"} if field == "context" else "a\udc00"
    with pytest.raises(InvalidInput, match=r"surrogate|unicode") as info:
        parse_event(json.dumps(text).encode(), now_ms=NOW)
    assert info.value.field == field
