"""Request and response bodies of the recommendation API, with example inputs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Id = Annotated[str, Field(min_length=1, max_length=128)]


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_categories: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=50
    )
    """Only items in at least one of these categories."""
    exclude_categories: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=50
    )
    exclude_items: list[Id] = Field(default_factory=list, max_length=500)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id
    k: int = Field(10, ge=1, le=1000)
    """How many items; clamped to the service's max_k and the catalog size."""
    exclude_seen: bool = True
    filters: Filters | None = None
    context: dict[Annotated[str, Field(max_length=64)], str | int | float | bool | None] | None = (
        Field(None, max_length=32)
    )


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    user_id_hash: str
    items: list[ScoredItem]
    model_version: str | None
    variant: str
    fallback: bool
    fallback_reason: str | None = None
    server_ms: float


class SimilarResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str | None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(min_length=1, max_length=100)
    """Interaction events in the platform's contract (rtrec.events.Interaction)."""


class FeedbackResponse(BaseModel):
    accepted: int


EXAMPLE_RECOMMEND: dict[str, Any] = {
    "user_id": "u42",
    "k": 10,
    "exclude_seen": True,
    "filters": {"exclude_categories": ["horror"], "exclude_items": ["i7"]},
    "context": {"device": "ios"},
}
EXAMPLE_FEEDBACK: dict[str, Any] = {
    "events": [{"user_id": "u42", "item_id": "i9", "event_type": "click", "ts": 1732280000000}]
}
