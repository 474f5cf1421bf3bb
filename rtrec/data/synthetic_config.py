"""The synthetic generator's knobs: the world's size and shape, and an optional drift.

Kept apart from the generator so the settings (validated by pydantic) read on their own;
:mod:`rtrec.data.synthetic` re-exports both classes, the names callers import.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rtrec.errors import InvalidInput

DAY_MS = 86_400_000


class ShiftConfig(BaseModel):
    """A distribution change at one instant, so drift detection has ground truth."""

    model_config = ConfigDict(extra="forbid")

    at_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    """Where the shift happens, as a fraction of the time span (ignored if ``at_ts`` set)."""
    at_ts: int | None = None
    """Absolute shift time (ms); overrides ``at_fraction``."""
    popularity_shift: float = Field(0.6, ge=0.0, le=1.0)
    """Share of item popularity mass handed to other (randomly re-ranked) items."""
    new_items: int = Field(50, ge=0)
    """Items created at the shift; they draw ``new_items_share`` of all picks afterwards."""
    new_items_share: float = Field(0.25, ge=0.0, lt=1.0)
    """Popularity mass the new items take after the shift."""
    new_item_categories: int = Field(2, ge=1)
    """New items concentrate in this many categories (a trend), moving the category mix."""
    taste_drift: float = Field(0.3, ge=0.0, le=1.0)
    """Share of users who move to another taste cluster at the shift."""


class SyntheticConfig(BaseModel):
    """Knobs of :func:`generate`; the defaults make about a month of events."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 42
    """Same seed -> identical frames."""
    n_users: int = Field(20_000, ge=1)
    n_items: int = Field(10_000, ge=1)
    """Catalog size before the shift (new shift items come on top)."""
    n_categories: int = Field(24, ge=2)
    n_events: int = Field(1_000_000, ge=1)
    start_ts: int = Field(1_756_684_800_000, ge=0)
    """First possible event time (ms); default 2025-09-01T00:00Z, safely in the past."""
    days: float = Field(30.0, gt=0.0)
    zipf_exponent: float = Field(1.0, ge=0.0)
    """Item popularity ~ 1 / rank**s; 1.0 puts about half the picks on the top 1% items."""
    n_clusters: int = Field(12, ge=1)
    """Taste clusters users belong to."""
    categories_per_cluster: int = Field(3, ge=1)
    taste_strength: float = Field(0.85, ge=0.0, le=1.0)
    """Probability a fresh pick comes from the user's favourite categories."""
    activity_sigma: float = Field(1.0, ge=0.0)
    """Lognormal spread of user activity (a few heavy users, many light ones)."""
    new_user_share: float = Field(0.1, ge=0.0, le=1.0)
    """Users who sign up during the span (cold-start users)."""
    session_mean_events: float = Field(6.0, ge=1.0)
    """Mean events per session (1 + geometric)."""
    session_gap_s: float = Field(40.0, gt=0.0)
    """Mean seconds between events of one session (plus one second minimum)."""
    habit_items: int = Field(5, ge=1)
    """Habitual items per user (drawn uniformly from their favourite categories)."""
    p_habit: float = Field(0.15, ge=0.0, le=1.0)
    """Chance a fresh pick is one of the user's habitual items (repeat consumption)."""
    p_funnel: float = Field(0.6, ge=0.0, le=1.0)
    """Chance a click/add_to_cart/purchase acts on the session's previous item."""
    p_next: float = Field(0.35, ge=0.0, le=1.0)
    """Chance any other in-session event moves to the previous item's successor."""
    event_mix: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 0.62,
            "click": 0.2,
            "add_to_cart": 0.08,
            "purchase": 0.04,
            "rating": 0.06,
        }
    )
    """Relative frequency of each event type."""
    shift: ShiftConfig | None = None
    """Optional distribution change; None keeps the world stationary."""

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        from rtrec.events import EVENT_TYPES

        unknown = set(self.event_mix) - set(EVENT_TYPES)
        if unknown or not self.event_mix or min(self.event_mix.values()) < 0:
            raise InvalidInput(
                f"event_mix keys must be among {EVENT_TYPES} with weights >= 0; got "
                f"{self.event_mix}",
                field="event_mix",
            )
        if self.n_items < self.n_categories:
            raise InvalidInput(
                f"n_items={self.n_items} must be >= n_categories={self.n_categories} "
                "so that every category has an item",
                field="n_items",
            )
        if self.categories_per_cluster > self.n_categories:
            raise InvalidInput(
                f"categories_per_cluster={self.categories_per_cluster} exceeds "
                f"n_categories={self.n_categories}",
                field="categories_per_cluster",
            )
        return self

    @classmethod
    def small(cls, **overrides: Any) -> SyntheticConfig:
        """~2k users, ~1k items, 100k events: tests and ``--quick`` demos (well under 1 s)."""
        base: dict[str, Any] = {"n_users": 2_000, "n_items": 1_000, "n_events": 100_000}
        return cls(**{**base, **overrides})

    @property
    def end_ts(self) -> int:
        return self.start_ts + int(self.days * DAY_MS)

    @property
    def shift_ts(self) -> int | None:
        if self.shift is None:
            return None
        if self.shift.at_ts is not None:
            return self.shift.at_ts
        return self.start_ts + int(self.shift.at_fraction * (self.end_ts - self.start_ts))
