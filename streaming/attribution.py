"""Attribution: which ``/recommend`` answer a click, add-to-cart or purchase followed.

One public entry point, :func:`attribute`, folds a polled batch of records from the
impressions topic and the events topic into the per-user join states it is given and
returns what the batch adds to each experiment arm (:class:`Tally`). It does no I/O: the
caller (``rtrec.streaming.experiment_join``) reads the states and applied offsets from Redis
and commits the tally with them in one fenced script, so redelivered records (offset at or
below the applied one) are skipped here and never counted twice.

The rules, all in event time:

- an outcome with a ``request_id`` counts for that answer if the answer showed the item
  and the outcome is at most ``window_ms`` after it; an answer that did not show the item,
  or is older than that, gets nothing (the id is the client's word, not a hint);
- an outcome without one counts for the user's latest answer that showed the item at most
  ``window_ms`` before it (``impression ts <= outcome ts <= impression ts + window``);
- an outcome that finds no answer (yet) is counted as unattributed and waits in the
  user's state: impressions are sent in batches and travel another topic, so an answer's
  impression may be read after the click on it. When it arrives (within the window) the
  outcome moves from unattributed to the arm of the first such answer read; otherwise
  it stays unattributed;
- a user's state keeps what lies within the window of the newest time it has seen (at
  most :data:`MAX_HELD` answers and as many waiting outcomes), so it stays small.

An impression whose ``request_id`` the state already holds (a producer retry writes a
record twice) counts once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from rtrec.streaming.validate import validate

from rtrec.errors import InvalidInput
from rtrec.events import unpack_impressions

OUTCOMES = ("click", "add_to_cart", "purchase")
"""Event types attributed to answers (views and ratings are not outcomes of an answer)."""
NO_EXPERIMENT = "none"
"""The experiment of answers served while no A/B split ran."""
MAX_HELD = 64
"""Most answers, and most waiting outcomes, one user's state keeps."""
_INVALID = object()


@dataclass
class Shown:
    """One answer (its impression) as attribution needs it."""

    request_id: str
    ts: int
    experiment: str
    variant: str
    user: str
    """The redacted user id (``user_id_hash``): what the arm's user sets hold."""
    items: list[str]
    """Item ids by position (position 1 first)."""
    clicked: bool = False


@dataclass
class Outcome:
    """A click, add-to-cart or purchase waiting for its answer."""

    item_id: str
    event_type: str
    ts: int
    request_id: str | None


@dataclass
class UserJoin:
    """One user's answers within the window and the outcomes still waiting for one."""

    shown: list[Shown] = field(default_factory=list)
    waiting: list[Outcome] = field(default_factory=list)
    newest: int = 0

    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "s": [
                    [s.request_id, s.ts, s.experiment, s.variant, s.user, s.items, s.clicked]
                    for s in self.shown
                ],
                "w": [[o.item_id, o.event_type, o.ts, o.request_id] for o in self.waiting],
                "n": self.newest,
            }
        )

    @classmethod
    def loads(cls, raw: bytes | str | None) -> UserJoin:
        if not raw:
            return cls()
        data = orjson.loads(raw)
        return cls([Shown(*s) for s in data["s"]], [Outcome(*o) for o in data["w"]], int(data["n"]))


@dataclass
class ArmDelta:
    """What a batch adds to one (experiment, variant)."""

    counts: dict[str, float] = field(default_factory=dict)
    """``impressions``, each outcome type, ``clicked_impressions``, ``rr_sum`` (the sum of
    1/position over attributed clicks)."""
    users: set[str] = field(default_factory=set)
    clickers: set[str] = field(default_factory=set)
    first_ms: int = 0
    last_ms: int = 0
    per_user: dict[str, list[int]] = field(default_factory=dict)
    """Redacted user -> [impressions, clicked impressions] this batch adds: the readout's
    variance is per user, the unit the split assigns (one user's impressions are not
    independent trials)."""

    def add(self, name: str, n: float = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def add_user(self, user: str, *, impressions: int = 0, clicked: int = 0) -> None:
        row = self.per_user.setdefault(user, [0, 0])
        row[0] += impressions
        row[1] += clicked


@dataclass
class Tally:
    """What one batch adds, and which states and offsets it moved."""

    arms: dict[tuple[str, str], ArmDelta] = field(default_factory=dict)
    unattributed: dict[str, int] = field(default_factory=dict)
    """Per outcome type: outcomes that found no answer, less waiting ones that found it."""
    late: dict[str, int] = field(default_factory=dict)
    """Per outcome type: waiting outcomes this batch found their answer for."""
    joins: dict[str, UserJoin] = field(default_factory=dict)
    """The states the batch changed (user id -> state), to be written back."""
    applied: dict[tuple[str, int], int] = field(default_factory=dict)
    """The applied offsets read before folding: the commit is fenced on them."""
    high: dict[tuple[str, int], int] = field(default_factory=dict)
    """Per (topic, partition), the batch's last offset (the applied offset it commits)."""
    skipped: int = 0
    """Redelivered records (at or below the applied offset)."""
    invalid: int = 0
    """Records neither a valid impression nor a valid event (the processor dead-letters
    the events; a malformed impression is only counted)."""

    def arm(self, shown: Shown) -> ArmDelta:
        key = (shown.experiment, shown.variant)
        arm = self.arms.get(key)
        if arm is None:
            arm = self.arms[key] = ArmDelta(first_ms=shown.ts, last_ms=shown.ts)
        return arm


Load = Callable[[list[str]], tuple[dict[tuple[str, int], int], dict[str, UserJoin]]]
"""Given the batch's users: the applied offsets and those users' stored join states."""


def attribute(
    records: Iterable[Any],
    *,
    load: Load,
    impressions_topic: str,
    window_ms: int,
    now_ms: int,
) -> Tally:
    """Fold ``records`` (``topic, partition, offset, key, value``) above the applied
    offsets into the users' join states that ``load`` returns, and return the tally (with
    the offsets read and the changed states, which the caller commits together).
    Impressions go first: an outcome in the same batch then finds its answer."""
    tally = Tally()
    parsed = []
    for r in sorted(records, key=lambda r: r.topic != impressions_topic):
        where = (r.topic, r.partition)
        tally.high[where] = max(r.offset, tally.high.get(where, -1))
        try:
            parsed.extend((where, r.offset, *p) for p in _parse(r, impressions_topic, now_ms))
        except (InvalidInput, ValueError, KeyError, TypeError):
            parsed.append((where, r.offset, "", _INVALID))
    users = sorted({u for _, _, u, record in parsed if isinstance(record, Shown | Outcome)})
    tally.applied, stored = load(users)
    for where, offset, user, record in parsed:
        if offset <= tally.applied.get(where, -1):
            tally.skipped += 1
            continue
        if not isinstance(record, Shown | Outcome):
            tally.invalid += record is _INVALID  # else an event that is no outcome (a view)
            continue
        state = stored.get(user)
        if state is None:
            state = stored[user] = UserJoin()
        if isinstance(record, Shown):
            _show(state, record, window_ms, tally)
        else:
            _outcome(state, record, window_ms, tally)
        _trim(state, window_ms)
        tally.joins[user] = state
    return tally


def _parse(r: Any, impressions_topic: str, now_ms: int) -> list[tuple[str, Shown | Outcome | None]]:
    """(user id, what it says) per impression of an impressions record (one record holds
    a batch), or for the one event of an events record (an event that is no outcome says
    nothing). One malformed impression makes the whole record invalid: it is counted."""
    if r.topic == impressions_topic:
        return [(_user(body), _shown(body)) for body in unpack_impressions(r.value)]
    event = validate(r.value, now_ms)
    if event.event_type not in OUTCOMES:
        return [(event.user_id, None)]
    return [(event.user_id, Outcome(event.item_id, event.event_type, event.ts, event.request_id))]


def _user(body: dict[str, Any]) -> str:
    user = body.get("user_id")
    if not isinstance(user, str) or not user:
        raise InvalidInput("impression without its user_id", field="user_id")
    return user


def _shown(body: dict[str, Any]) -> Shown:
    items = [str(i["item_id"]) for i in sorted(body["items"], key=lambda i: i["position"])]
    return Shown(
        request_id=str(body["request_id"]),
        ts=int(body["ts"]),
        experiment=str(body.get("experiment") or NO_EXPERIMENT),
        variant=str(body["variant"]),
        user=str(body["user_id_hash"]),
        items=items,
    )


def _show(state: UserJoin, shown: Shown, window_ms: int, tally: Tally) -> None:
    if any(s.request_id == shown.request_id for s in state.shown):
        return  # the same impression twice (a producer retry): counted once
    state.shown.append(shown)
    state.newest = max(state.newest, shown.ts)
    arm = tally.arm(shown)
    arm.add("impressions")
    arm.users.add(shown.user)
    arm.add_user(shown.user, impressions=1)
    arm.first_ms, arm.last_ms = min(arm.first_ms, shown.ts), max(arm.last_ms, shown.ts)
    still = []
    for o in state.waiting:
        if _fits(shown, o, window_ms):
            _credit(shown, o, tally)
            tally.unattributed[o.event_type] = tally.unattributed.get(o.event_type, 0) - 1
            tally.late[o.event_type] = tally.late.get(o.event_type, 0) + 1
        elif o.request_id != shown.request_id:
            still.append(o)  # its own answer (or a later one) may still come
    state.waiting = still


def _outcome(state: UserJoin, o: Outcome, window_ms: int, tally: Tally) -> None:
    state.newest = max(state.newest, o.ts)
    if o.request_id is not None:
        named = [s for s in state.shown if s.request_id == o.request_id]
        target = named[0] if named and _fits(named[0], o, window_ms) else None
        wait = not named  # the answer named may not have been read yet
    else:
        fits = [s for s in state.shown if _fits(s, o, window_ms)]
        target = max(reversed(fits), key=lambda s: s.ts) if fits else None
        wait = True
    if target is not None:
        _credit(target, o, tally)
        return
    tally.unattributed[o.event_type] = tally.unattributed.get(o.event_type, 0) + 1
    if wait:
        state.waiting.append(o)


def _fits(shown: Shown, o: Outcome, window_ms: int) -> bool:
    """Could ``o`` have followed ``shown``? A named answer needs only to be the one and
    not too old (clocks of clients and servers differ); an inferred one must precede."""
    if o.item_id not in shown.items:
        return False
    if o.request_id is not None:
        return o.request_id == shown.request_id and o.ts - shown.ts <= window_ms
    return shown.ts <= o.ts <= shown.ts + window_ms


def _credit(shown: Shown, o: Outcome, tally: Tally) -> None:
    arm = tally.arm(shown)
    arm.add(o.event_type)
    if o.event_type == "click":
        arm.add("rr_sum", 1.0 / (shown.items.index(o.item_id) + 1))
        arm.clickers.add(shown.user)
        if not shown.clicked:
            shown.clicked = True
            arm.add("clicked_impressions")
            arm.add_user(shown.user, clicked=1)


def _trim(state: UserJoin, window_ms: int) -> None:
    horizon = state.newest - window_ms
    state.shown = [s for s in state.shown if s.ts >= horizon][-MAX_HELD:]
    state.waiting = [o for o in state.waiting if o.ts >= horizon][-MAX_HELD:]
