"""The event contract: what flows on Kafka and into the feature store.

An interaction is one user action on one item. On the wire it is a JSON object::

    {"user_id": "u42", "item_id": "i7", "event_type": "click",
     "ts": 1732280000123, "value": null, "context": {"device": "ios"},
     "request_id": "5f0c6e1b9a8d4c2e8b7a6f5e4d3c2b1a"}

``ts`` is milliseconds since the Unix epoch (UTC); an ISO-8601 string is accepted too.
Every validation error is raised as :class:`rtrec.errors.InvalidInput` naming the field.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rtrec.errors import InvalidInput

MAX_EVENT_BYTES = 16 * 1024
"""Largest serialized event accepted; bigger payloads are dead-lettered."""
MAX_FUTURE_MS = 24 * 3600 * 1000
"""Events stamped further than this in the future are rejected (clock bugs, forgeries)."""
MIN_TS_MS = 0
"""Timestamps before the epoch are rejected."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"
"""A ``/recommend`` answer's id: 128 random bits as 32 lowercase hex characters."""
ContextValue = str | int | float | bool | None


class EventType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RATING = "rating"


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)


class Interaction(BaseModel):
    """One user action on one item."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Id
    item_id: Id
    event_type: EventType
    ts: int = Field(ge=MIN_TS_MS)
    """Event time, ms since the epoch (UTC)."""
    value: float | None = Field(default=None, allow_inf_nan=False, strict=True)
    """Rating (1–5) for ``rating`` events, amount for purchases; else null. Strict: a JSON
    number only (``true``/``false`` or ``"3"`` would otherwise be coerced to 1.0/0.0/3.0
    and a boolean rating would silently count as a real one)."""
    context: dict[Annotated[str, Field(max_length=64)], ContextValue] | None = Field(
        default=None, max_length=32
    )
    """Free-form request context (device, page, experiment arm), bounded in size."""
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)
    """The ``request_id`` of the ``/recommend`` answer this action followed, when the
    client knows it: the stream processor then attributes the action to that answer's
    impression instead of inferring one (``rtrec.streaming.attribution``)."""

    @field_validator("context")
    @classmethod
    def _encodable(cls, v: Any) -> Any:
        """Lone surrogates (JSON's ``"\\ud800"``) decode to a Python string that cannot be
        written back as UTF-8: such an event would fail later, when serving forwards it to
        Kafka, instead of here where it can be dead-lettered with a reason. (The id fields
        are plain strings, which pydantic already refuses them in.)"""
        for text in [*(v or {}), *(x for x in (v or {}).values() if isinstance(x, str))]:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("contains a lone surrogate (not valid UTF-8)") from None
        return v

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, v: Any) -> Any:
        """An integer (ms since the epoch) or an ISO 8601 string with a time zone.

        Integer arithmetic on the parsed time: ``timestamp() * 1000`` is a float product
        that truncates to one millisecond low for some values. A string without a zone
        would mean the parsing machine's local time, and a numeric string is more likely
        a bug upstream than a timestamp: both are refused, naming the problem.
        """
        if isinstance(v, str):
            try:
                parsed = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(
                    "ts must be an integer (ms since epoch) or an ISO 8601 time with a zone"
                ) from None
            if parsed.tzinfo is None:
                raise ValueError("ts as ISO 8601 must carry a time zone (Z or +hh:mm)")
            return (parsed - _EPOCH) // timedelta(milliseconds=1)
        if isinstance(v, bool):
            raise ValueError("ts must be an integer (ms since epoch), not a boolean")
        return v

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class ItemRecord(BaseModel):
    """Catalog metadata for one item."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: Id
    title: str = Field(default="", max_length=512)
    categories: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=32
    )
    created_ts: int = Field(default=0, ge=0)
    """When the item entered the catalog (ms); new items appear mid-stream."""


class UserRecord(BaseModel):
    """Profile metadata for one user."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Id
    age: int | None = Field(default=None, ge=0, le=150)
    gender: str | None = Field(default=None, max_length=16)
    occupation: str | None = Field(default=None, max_length=64)
    signup_ts: int = Field(default=0, ge=0)


def _first_error(exc: ValidationError) -> InvalidInput:
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"]) or "<root>"
    msg = err["msg"]
    if err["type"] == "missing":
        return InvalidInput(f"missing field '{field}'", field=field)
    if err["type"] == "extra_forbidden":
        return InvalidInput(f"unknown field '{field}'", field=field)
    if err["type"] == "enum":
        return InvalidInput(
            f"field '{field}': unknown event type {err.get('input')!r}; "
            f"expected one of {', '.join(EVENT_TYPES)}",
            field=field,
        )
    return InvalidInput(f"field '{field}': {msg}", field=field)


def parse_event(
    raw: bytes | str | dict[str, Any],
    *,
    now_ms: int | None = None,
    max_future_ms: int = MAX_FUTURE_MS,
) -> Interaction:
    """Validate one event from wire bytes (or a decoded dict).

    Raises :class:`InvalidInput` whose ``field`` names what is wrong: ``<payload>`` for
    oversized or undecodable bytes, ``<json>`` for bad JSON, else the field itself.
    """
    if isinstance(raw, bytes | str):
        if len(raw) > MAX_EVENT_BYTES:
            raise InvalidInput(
                f"payload of {len(raw)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit",
                field="<payload>",
            )
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"payload is not UTF-8: {exc.reason} at byte {exc.start}", field="<payload>"
                ) from None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise InvalidInput(f"invalid JSON: {exc}", field="<json>") from exc
        except RecursionError:  # e.g. 16 KiB of '[': a poison pill that crashed the processor
            raise InvalidInput("invalid JSON: nested too deeply", field="<json>") from None
    else:
        data = raw
    if not isinstance(data, dict):
        raise InvalidInput(
            f"event must be a JSON object, got {type(data).__name__}", field="<json>"
        )
    try:
        event = Interaction.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if event.ts > now + max_future_ms:
        raise InvalidInput(
            f"field 'ts': {event.ts} is more than {max_future_ms // 1000} s in the future",
            field="ts",
        )
    if event.event_type is EventType.RATING and event.value is None:
        raise InvalidInput("field 'value': rating events need a value", field="value")
    return event


IMPRESSIONS_SCHEMA = 2
"""The impressions topic's record layout (``schema`` of each record)."""


def pack_impressions(impressions: list[dict[str, Any]]) -> bytes:
    """One impressions-topic record holding many answers' impressions.

    An impression is a ``/recommend`` answer as it was shown (request id, raw
    ``user_id`` as on the events topic, ``user_id_hash``, variant, model version,
    experiment, items by position, fallback); the service sends them in batches, one
    record per batch, because a record costs the producer far more than a few hundred
    bytes more in one: per impression it was the larger part of the service's CPU.
    """
    import orjson

    return orjson.dumps({"schema": IMPRESSIONS_SCHEMA, "impressions": impressions})


def unpack_impressions(value: bytes) -> list[dict[str, Any]]:
    """The impressions in one record (:func:`pack_impressions`); :class:`InvalidInput`
    for anything else, so a consumer can count it and go on."""
    import orjson

    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"impressions record is not JSON: {exc}", field="value") from exc
    if not isinstance(body, dict) or body.get("schema") != IMPRESSIONS_SCHEMA:
        raise InvalidInput(
            f"impressions record of an unknown layout (schema {IMPRESSIONS_SCHEMA} expected)",
            field="schema",
        )
    impressions = body.get("impressions")
    if not isinstance(impressions, list) or not all(isinstance(i, dict) for i in impressions):
        raise InvalidInput("impressions record without a list of impressions", field="impressions")
    return impressions
