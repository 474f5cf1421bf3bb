"""The ranker's training states at each example's time, from Feast's historical retrieval.

A ranker row is a (user, candidate, time) with the candidates generated from, and the
user's features computed from, the user's state at that time. Serving builds that state
from the user's online row (``served_rank.online_state``); here the training state comes
from the same row as the offline store kept it: Feast's point-in-time join over the
``user_stream`` view, then the same ``online_state``. One function turns a feature row
into a :class:`UserState` on both sides, so the two cannot compute it differently.

Time: an example at ``now`` may see events strictly before ``now`` (``ranker.ranking_rows``
labels the events from ``now`` on). A stream row is stamped with the user's latest event
and Feast takes rows stamped at or before the entity's time, so the entity time is
``now - 1`` ms: the row holds events up to ``now - 1`` only. The view has no TTL
(``rtrec.features.definitions``): an idle user's old row is what a request reads too.

Where the events did not come through the stream (``--data``, ``bench/quality.py`` on a
MovieLens directory) there is no such row: the states are the event log's
(``candidates.user_states``), and which path was used is recorded in the ranker's info
(``ranker_states``) and logged, never switched silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from rtrec.training.candidates import UserState, user_states
from rtrec.training.served_rank import online_state

from rtrec.config import Settings

logger = logging.getLogger(__name__)

StatesAt = Callable[[Sequence[str], int], list[UserState]]
"""``states(user_ids, now)``: each user's state from what it did strictly before ``now``."""

FEAST = "feast_historical"
EVENT_LOG = "event_log"


@dataclass(frozen=True)
class StatePath:
    """Where the ranker's training states come from, and why that source."""

    kind: Literal["feast_historical", "event_log"]
    reason: str


def choose_path(settings: Settings, source: str | None, now: int | None) -> StatePath:
    """Feast's historical retrieval when the examples have a time (``now``: a time
    split), their events are the stream's offline log (``source``) and the stream wrote
    user rows offline; the event log otherwise, with the reason. A stream log without
    offline rows is a degradation: logged at WARNING (the info records it too)."""
    from rtrec.features import has_offline_user_rows

    if now is None:
        return StatePath(EVENT_LOG, "random split: the examples have no time to join at")
    if source is None or Path(source).resolve() != Path(settings.offline_dir).resolve():
        return StatePath(
            EVENT_LOG, f"events from {source}, not the stream's offline log: no feature rows"
        )
    if not has_offline_user_rows(settings):
        reason = "the stream's offline log has no user_stream feature rows"
        logger.warning("ranker training states from the event log: %s", reason)
        return StatePath(EVENT_LOG, reason)
    return StatePath(FEAST, "events from the stream's offline log, its feature rows beside it")


def training_states(
    settings: Settings,
    source: str | None,
    now: int | None,
    users: Sequence[str],
    events: pd.DataFrame,
    limit: int | None,
) -> tuple[StatesAt | None, dict[str, Any]]:
    """The ranker's training states for ``users`` at ``now`` (None: the event log's) and
    what the ranker's info records of them: the path and why; through Feast, the rows
    retrieved, their rate and how the states compare with ``events`` (the event log).

    States that too often differ from the event log's (``training.ranker_states_min_
    agreement``) are not what a request at ``now`` would have read but the offline
    store's coarser record of it: the event log's are used, said at WARNING."""
    path = choose_path(settings, source, now)
    info: dict[str, Any] = {"source": path.kind, "reason": path.reason}
    if path.kind != FEAST or now is None:
        return None, info
    feast = FeastStates(settings, limit)
    agreed = agreement(feast(users, now), events, now, limit)
    info |= {"feast_rows": feast.rows, "feast_rows_per_s": feast.rows_per_s}
    info["agreement"] = agreed
    floor = settings.training.ranker_states_min_agreement
    share = agreed["equal_to_event_log"]
    if share is not None and share < floor:
        reason = (
            f"Feast's rows too coarse at the cut: {share:.0%} of {agreed['users']} states "
            f"equal the event log's (< {floor:.0%}; the stream keeps a user's state after "
            "each batch and at each hour within it: a cut inside an hour that one batch "
            "spans is coarser)"
        )
        logger.warning("ranker training states from the event log: %s", reason)
        return None, info | {"source": EVENT_LOG, "reason": reason}
    return feast, info


class FeastStates:
    """:data:`StatesAt` through Feast's historical retrieval, timing what it read."""

    def __init__(self, settings: Settings, limit: int | None) -> None:
        self.settings = settings
        self.limit = limit
        self.rows = 0
        self.seconds = 0.0
        self._last: tuple[tuple[str, ...], int, list[UserState]] | None = None
        """The last answer: the fit asks for the first fold's states twice."""

    def __call__(self, user_ids: Sequence[str], now: int) -> list[UserState]:
        from rtrec.features import historical_user_rows

        users = tuple(str(u) for u in user_ids)
        if self._last is not None and self._last[:2] == (users, now):
            return list(self._last[2])
        t = time.perf_counter()
        rows = historical_user_rows(self.settings, list(users), [now - 1] * len(users))
        self.seconds += time.perf_counter() - t
        self.rows += len(users)
        states = [online_state(u, r, self.limit) for u, r in zip(users, rows, strict=True)]
        self._last = (users, now, states)
        return list(states)

    @property
    def rows_per_s(self) -> float | None:
        return round(self.rows / self.seconds, 1) if self.seconds else None


def agreement(
    states: Sequence[UserState], events: pd.DataFrame, now: int, limit: int | None
) -> dict[str, Any]:
    """How the retrieved states compare with the event log's at ``now`` (what the states
    would be with every event before ``now``): the share of users whose items, window
    counts and latest time are all equal, and the users with history in the log but no
    row. Differences come from the offline store's granularity (the stream keeps a
    changed user's state after each batch and at each hour within it, so a user active
    on both sides of ``now`` within ``now``'s hour and one batch gets its state from
    before that hour) and from events the stream never took."""
    users = [s.user_id for s in states]
    logged = user_states(events, users, before=now, limit=limit)
    same = sum(_same(a, b) for a, b in zip(states, logged, strict=True))
    missing = sum(a.cold and not b.cold for a, b in zip(states, logged, strict=True))
    return {
        "users": len(users),
        "equal_to_event_log": round(same / len(users), 4) if users else None,
        "no_row_but_history": missing,
    }


def _same(a: UserState, b: UserState) -> bool:
    return (
        list(a.items) == list(b.items)
        and a.last_ts == b.last_ts
        and tuple(a.counts) == tuple(b.counts)
    )
