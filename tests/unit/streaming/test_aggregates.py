"""User state folding against a brute-force count, and its Redis round trip."""

from __future__ import annotations

import random

from rtrec.features.definitions import RECENT_ITEMS, WINDOWS
from rtrec.streaming.aggregates import UserState

from rtrec.events import EVENT_TYPES


def brute(events: list[tuple[str, str, int]]) -> dict:
    last = max(ts for _, _, ts in events)
    in_order = sorted(events, key=lambda e: e[2])  # stable: ties keep arrival order
    out = {"recent_items": [i for i, _, _ in in_order][::-1][:RECENT_ITEMS], "last_event_ms": last}
    for t in EVENT_TYPES:
        for name, span in WINDOWS.items():
            out[f"cnt_{t}_{name}"] = sum(1 for _, et, ts in events if et == t and ts > last - span)
    return out


def test_counts_and_history_match_brute_force_across_save_and_load() -> None:
    rng = random.Random(5)
    t0 = 1_750_000_000_000
    events, ts = [], t0
    for _ in range(400):
        ts += rng.randint(0, 3 * 3_600_000)
        events.append((f"i{rng.randint(0, 50)}", rng.choice(EVENT_TYPES), ts))
    state = UserState()
    for k, (item, etype, at) in enumerate(events):
        state.apply(item, etype, at)
        if k % 37 == 0:  # a restart: state saved (trimmed) and loaded again
            state = UserState.loads(state.dumps())
    assert state.features() == brute(events)


def test_out_of_order_event_counts_but_does_not_lead_the_history() -> None:
    state = UserState()
    state.apply("a", "view", 1_000_000)
    state.apply("b", "click", 500_000)
    f = state.features()
    assert f["recent_items"] == ["a"] and f["last_event_ms"] == 1_000_000
    assert f["cnt_click_1h"] == 1 and f["cnt_view_7d"] == 1


def test_empty_state_loads_from_nothing() -> None:
    assert UserState.loads(None).features()["cnt_view_24h"] == 0
