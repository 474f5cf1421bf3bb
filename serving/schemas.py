"""Request and response bodies of the recommendation API, with example inputs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from rtrec.events import ContextValue, Interaction

Id = Annotated[str, Field(min_length=1, max_length=128)]
ITEM_ID_PATTERN = r"^[^\x00-\x1f/]+$"
"""Item ids in paths: no control characters (the event contract forbids them too)."""


def _whole_number(v: Any) -> Any:
    """JSON Schema counts 5.0 as an integer; strict models would refuse it, so take it."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


WholeInt = Annotated[int, BeforeValidator(_whole_number)]
"""An integer, strictly (no strings, no booleans), that also accepts 5.0."""
STRICT = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)


class Filters(BaseModel):
    model_config = STRICT

    include_categories: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=50
    )
    """Only items in at least one of these categories."""
    exclude_categories: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=50
    )
    exclude_items: list[Id] = Field(default_factory=list, max_length=500)


class RecommendRequest(BaseModel):
    model_config = STRICT

    user_id: Id
    k: WholeInt = Field(10, ge=1, le=1000)
    """How many items; clamped to the service's max_k and the catalog size."""
    exclude_seen: bool = True
    filters: Filters | None = None
    context: dict[Annotated[str, Field(max_length=64)], str | int | float | bool | None] | None = (
        Field(None, max_length=32)
    )


EXAMPLE_RECOMMEND_RESPONSE: dict[str, Any] = {
    "request_id": "5f0c6e1b9a8d4c2e8b7a6f5e4d3c2b1a",
    "user_id_hash": "h:3fa1c09be27d",
    "items": [{"item_id": "i12", "score": 0.913}, {"item_id": "i3", "score": 0.872}],
    "model_version": "7",
    "variant": "champion",
    "experiment": "7-vs-8",
    "fallback": False,
    "fallback_reason": None,
    "server_ms": 1.234,
}
"""An answer as the OpenAPI description shows it (k=2)."""


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={"examples": [EXAMPLE_RECOMMEND_RESPONSE]},
    )

    request_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    """This answer's id: 128 random bits as 32 lowercase hex characters, on fallback
    answers too. The impression logged for the answer carries it (``kafka.impressions_topic``)."""
    user_id_hash: str
    """The user id redacted (``redact_id``), as in the service's logs."""
    items: list[ScoredItem]
    model_version: str | None
    variant: str
    """``champion`` or ``challenger`` (sticky per user, ``serving.ab_challenger_share``)."""
    experiment: str | None = None
    """The A/B experiment the answer belongs to, ``<champion version>-vs-<challenger
    version>``; null while no challenger is loaded or its share is 0."""
    fallback: bool
    fallback_reason: str | None = None
    """Why the fallback list was served: a short label (``cold user``), then details."""
    server_ms: float


class SimilarResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str | None


class FeedbackEvent(Interaction):
    """An interaction as a client sends it. The service sets ``context.source_key`` to
    the sending API key's name (any value sent is replaced), so one context entry fewer
    is left to the client than the event contract allows."""

    context: dict[Annotated[str, Field(max_length=64)], ContextValue] | None = Field(
        default=None, max_length=31
    )


class FeedbackRequest(BaseModel):
    model_config = STRICT

    events: list[FeedbackEvent] = Field(min_length=1, max_length=100)
    """Interaction events in the platform's contract. Two of its rules are beyond this
    schema: ``ts`` at most 24 h in the future, and ``rating`` events carry a ``value``;
    breaking either answers 422 naming the field (:func:`rtrec.events.parse_event`)."""


class FeedbackResponse(BaseModel):
    accepted: int


class ErrorDetail(BaseModel):
    field: str
    msg: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/503 body: a message and the offending field (``user_id``, ``X-API-Key``)."""

    error: str
    field: str | None = None
    detail: list[ErrorDetail] | None = None
    """All validation errors (first ten), on 422 only."""


class RankerStatus(BaseModel):
    """The model's second stage: ``loaded``; ``unavailable`` (declared by its bundle but
    refused at load: answers use retrieval order, flagged); ``none`` (a single-stage
    bundle)."""

    state: Literal["loaded", "unavailable", "none"]
    version: str | None
    error: str | None


class LoadedModel(BaseModel):
    version: str | None
    source: str
    ranker: RankerStatus


class LastDegradation(BaseModel):
    reason: str
    detail: str
    at: str
    """ISO 8601, UTC."""


class Degradations(BaseModel):
    """By-design degradations since the service started (fallback answers, a list topped
    up from the fallback, a failed trending refresh or registry watch)."""

    counts: dict[str, int]
    """Occurrences per reason (the ``reason`` label of the Prometheus counters)."""
    last: LastDegradation | None


class LoopStalls(BaseModel):
    """The event loop's health since start (see ``rtrec_serving_loop_lag_seconds``)."""

    max_lag_ms: float
    stalls: int
    """Heartbeats late by more than the warning threshold (each logged with its cause)."""


class StatusResponse(BaseModel):
    ready: bool
    models: dict[str, LoadedModel]
    last_error: str | None
    online_store_down: str | None
    online_store_nodes_down: dict[str, str] = Field(default_factory=dict)
    """Redis Cluster nodes marked down -> why: only their users get the fallback."""
    event_broker_down: str | None
    fallback_source: str
    degradations: Degradations
    loop: LoopStalls


class ExperimentsResponse(BaseModel):
    """The A/B readout (:func:`rtrec.serving.experiment_readout.experiment_status`)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    test: str
    """Which statistical test the p-values and intervals come from."""
    challenger_share: float
    """The configured split (``serving.ab_challenger_share``) the SRM check compares with."""
    attribution_window_s: float
    experiments: list[dict[str, Any]]
    """Newest first: ``experiment``, ``variants`` (per variant: impressions, users,
    clicks, add_to_carts, purchases, click-through per impression and per user, add-to-cart
    and purchase rates, each ``{rate, low, high}`` with a 95 % Wilson interval, ``mrr``),
    ``lift`` (``{estimate, low, high}`` of click-through per impression, or null before
    both arms have a click), ``z``, ``p_value``, ``srm_p_value``, ``srm``,
    ``required_impressions`` per variant, ``verdict``: ``collecting``, ``challenger
    wins``, ``champion wins``, ``no difference`` or ``sample ratio mismatch``."""
    outside_experiments: dict[str, dict[str, Any]]
    """Answers served while no A/B split ran, per variant, as in ``variants``."""
    unattributed: dict[str, int]
    """Per outcome type: clicks, add-to-carts, purchases that no answer was found for."""


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the errors a route can answer (the guard's always: 503
    while the service starts)."""
    why = {
        401: "Missing or invalid X-API-Key",
        403: "The API key lacks the route's scope (or, on /feedback, the event's user)",
        408: "Body not received in time",
        404: "Unknown id",
        413: "Body too large",
        422: "Invalid request (names the field)",
        429: "Rate limit exceeded for this API key",
        503: "Dependency unavailable, or the service still starting",
    }
    return {
        c: {"model": ErrorResponse, "description": why[c]}
        for c in (401, 403, 408, 413, 429, 503, *codes)
    }


EXAMPLE_RECOMMEND: dict[str, Any] = {
    "user_id": "u42",
    "k": 10,
    "exclude_seen": True,
    "filters": {"exclude_categories": ["horror"], "exclude_items": ["i7"]},
    "context": {"device": "ios"},
}
EXAMPLE_FEEDBACK: dict[str, Any] = {
    "events": [
        {
            "user_id": "u42",
            "item_id": "i9",
            "event_type": "click",
            "ts": 1732280000000,
            "request_id": "5f0c6e1b9a8d4c2e8b7a6f5e4d3c2b1a",
        }
    ]
}
