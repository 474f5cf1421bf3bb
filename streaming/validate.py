"""Event validation at stream speed, with the contract (``rtrec.events``) as the judge.

``parse_event`` builds a pydantic model per event (about 10 µs here). Nearly every event
on the wire is the plain shape the producers write, so :func:`validate` first checks that
shape with orjson and a few comparisons; anything else (bad bytes, odd types, a context
object, ISO timestamps...) goes to ``parse_event``, which accepts it or raises
``InvalidInput`` naming the field. The fast check only ever *accepts* what ``parse_event``
accepts too (a unit test compares them on generated inputs); it never rejects.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import orjson

from rtrec.events import EVENT_TYPES, MAX_EVENT_BYTES, MAX_FUTURE_MS, parse_event

_KNOWN_TYPES = frozenset(EVENT_TYPES)
_ALLOWED_KEYS = frozenset(
    {"user_id", "item_id", "event_type", "ts", "value", "context", "request_id"}
)
_HEX = frozenset("0123456789abcdef")


class Event(NamedTuple):
    """A validated interaction, as light as the processor needs it."""

    user_id: str
    item_id: str
    event_type: str
    ts: int
    value: float | None
    source: str | None = None
    """``context.source_key``: who sent it (the service stamps the API key's name)."""
    request_id: str | None = None
    """The ``/recommend`` answer the action followed, when the client said so."""


def _fast(raw: bytes, limit_ms: int) -> Event | None:
    if len(raw) > MAX_EVENT_BYTES:
        return None
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(d) is not dict or not _ALLOWED_KEYS.issuperset(d) or d.get("context") is not None:
        return None
    user, item, etype, ts = d.get("user_id"), d.get("item_id"), d.get("event_type"), d.get("ts")
    if type(user) is not str or type(item) is not str or type(ts) is not int:
        return None
    if not (0 < len(user) <= 128 and 0 < len(item) <= 128):
        return None
    if min(user) < " " or min(item) < " " or type(etype) is not str:
        return None
    if etype not in _KNOWN_TYPES:  # after the type check: a list or object is unhashable
        return None
    if not 0 <= ts <= limit_ms:
        return None
    value = d.get("value")
    if value is not None:
        if type(value) is not float and type(value) is not int:
            return None
        value = float(value)
        if not math.isfinite(value):
            return None
    elif etype == "rating":
        return None
    request_id = d.get("request_id")
    if request_id is not None and (
        type(request_id) is not str or len(request_id) != 32 or not _HEX.issuperset(request_id)
    ):
        return None
    return Event(user, item, etype, ts, value, None, request_id)


def validate(raw: bytes, now_ms: int, *, max_future_ms: int = MAX_FUTURE_MS) -> Event:
    """The event in ``raw``, or :class:`rtrec.errors.InvalidInput` from ``parse_event``."""
    event = _fast(raw, now_ms + max_future_ms) if type(raw) is bytes else None
    if event is not None:
        return event
    full: Any = parse_event(raw, now_ms=now_ms, max_future_ms=max_future_ms)
    source = (full.context or {}).get("source_key")
    return Event(
        full.user_id,
        full.item_id,
        full.event_type.value,
        full.ts,
        full.value,
        source if isinstance(source, str) else None,
        full.request_id,
    )
