"""Every Redis script of the stream processor is Redis-Cluster-safe.

Two checks per script: the Lua source reaches Redis keys only through ``KEYS`` (never a
key from ARGV or a name built in Lua), and each call the code makes passes keys of one
cluster slot. The calls are the ones the real code paths make (``RedisState``,
``ExperimentState``), captured by a recording stand-in for the client; the scripts
themselves run against a real Redis Cluster in ``tests/integration/test_redis_cluster.py``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from redis.crc import key_slot
from rtrec.streaming.aggregates import WINDOW_HOURS, ItemDelta
from rtrec.streaming.attribution import ArmDelta, Tally
from rtrec.streaming.experiment_state import _COMMIT, _LEASE, _RELEASE, ExperimentState
from rtrec.streaming.state import RedisState, StateKeys
from rtrec.streaming.state_lua import SCRIPTS

from rtrec.config import Settings

ALL_SCRIPTS = {**SCRIPTS, "exp_commit": _COMMIT, "exp_lease": _LEASE, "exp_release": _RELEASE}
MULTI_KEY = {"DEL", "EXISTS", "MGET", "UNLINK", "TOUCH"}
"""Commands whose every argument is a key; the others used here take one key first."""


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments of a call's argument text."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [*out, cur.strip()] if cur.strip() else out


def _calls(src: str) -> list[list[str]]:
    """The argument lists of every ``redis.call(...)`` in ``src``."""
    found = []
    for m in re.finditer(r"redis\.(?:p?call)\(", src):
        depth, end = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(src[end], 0)
            end += 1
        found.append(_split_args(src[m.end() : end - 1]))
    return found


def _key_names(src: str) -> set[str]:
    """Lua variables only ever assigned ``KEYS[...]``."""
    assigned: dict[str, list[str]] = {}
    for m in re.finditer(r"(?:local\s+)?([\w\s,]+?)\s*=\s*([^\n;=]+)", src):
        # the last word of each name: "then score = ..." assigns ``score``
        names = [n.split()[-1] for n in m.group(1).split(",") if n.split()]
        values = _split_args(m.group(2))
        for name, value in zip(names, values, strict=False):
            assigned.setdefault(name, []).append(value.strip())
    is_key = re.compile(r"^KEYS\[[^\]]+\]$")
    return {n for n, vs in assigned.items() if all(is_key.match(v) for v in vs)}


def undeclared_keys(src: str) -> list[str]:
    """Key arguments of ``redis.call`` that are not taken from ``KEYS``."""
    keys = _key_names(src)
    bad = []
    for args in _calls(src):
        command = args[0].strip("'\"").upper()
        for arg in args[1:] if command in MULTI_KEY else args[1:2]:
            ok = re.fullmatch(r"KEYS\[[^\]]+\]|unpack\(KEYS(, *\d+)?\)", arg) or arg in keys
            if not ok:
                bad.append(f"{command} {arg}")
    return bad


def test_the_lua_check_flags_keys_from_argv_or_built_in_lua() -> None:
    bad = """
local k = KEYS[1]
local other = ARGV[1]
redis.call('GET', k)
redis.call('SET', ARGV[2], 1)
redis.call('HSET', 'rtrec:x:' .. ARGV[1], 'f', 1)
redis.call('DEL', k, other)
"""
    assert undeclared_keys(bad) == ["SET ARGV[2]", "HSET 'rtrec:x:' .. ARGV[1]", "DEL other"]


@pytest.mark.parametrize("name", sorted(ALL_SCRIPTS))
def test_scripts_touch_only_keys_passed_in_keys(name: str) -> None:
    src = ALL_SCRIPTS[name]
    assert _calls(src), f"{name}: no redis.call found (the parser missed them)"
    assert undeclared_keys(src) == [], name


class Recorder:
    """A stand-in client for these pure tests: records each script call's keys and answers
    what the script would (success), without a Redis."""

    def __init__(self, window: int) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.window = window

    def register_script(self, src: str) -> Any:
        return _Script(self, src)

    def script_load(self, src: str) -> str:
        return "sha"

    def answer(self, src: str, keys: list[str]) -> Any:
        if src == SCRIPTS["items_commit"]:
            return [1] + (([0] * self.window) + ["0"]) * (len(keys) - 4)
        if src == _COMMIT:
            return [1] + [[b"impressions", b"1"], 1, 0] * ((len(keys) - 4) // 3)
        return [1] if src == SCRIPTS["users_commit"] else 1


class _Script:
    def __init__(self, rec: Recorder, src: str) -> None:
        self.rec, self.script, self.sha = rec, src, "sha"

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        self.rec.calls.append((self.script, list(keys)))
        return self.rec.answer(self.script, list(keys))


def _recorded_calls() -> list[tuple[str, list[str]]]:
    settings = Settings(work_dir="/nonexistent")
    rec = Recorder(len(WINDOW_HOURS))
    for namespace in ("", "rtrec:backfill:abc:"):
        state = RedisState(settings, rec, WINDOW_HOURS, namespace=namespace)
        items = {f"i{n}": ItemDelta({100 + n: 2}, 1.5) for n in range(40)}
        users = {f"u{n}": b"{}" for n in range(40)}
        out = state.commit(
            offsets={0: (4, 9), 3: (-1, 2)}, states=users, batch_hour=101, items=items, log_id="L"
        )
        assert isinstance(out, dict) and len(out) == 40
        state.commit(offsets={}, states={}, batch_hour=101, items=items)  # the backfill's
        state.reset_log("L", "M")
        state.record_offline({0: (9, 5000)}, {0: 9, 3: 2}, log_id="M")
    exp = ExperimentState(settings, rec, "token")
    exp.hold_lease(1000)
    exp.release_lease()
    tally = Tally(high={("impressions", 0): 7, ("events", 2): 3}, unattributed={"click": 1})
    for n in range(5):
        tally.arms[(f"e{n}", "champion")] = ArmDelta({"impressions": 3}, {"a", "b"}, {"a"}, 1, 2)
    joins = {f"u{n}": b"{}" for n in range(30)}
    assert exp.commit(tally, applied={}, states=joins, ttl_s=60) is not None
    return rec.calls


def test_every_script_call_touches_one_cluster_slot() -> None:
    calls = _recorded_calls()
    assert {src for src, _ in calls} == set(ALL_SCRIPTS.values()), "a script went unexercised"
    for src, keys in calls:
        name = next(n for n, s in ALL_SCRIPTS.items() if s == src)
        slots = {key_slot(k.encode()) for k in keys}
        assert len(slots) == 1, f"{name} spans slots {sorted(slots)}: {keys[:6]}"


def test_a_backfilled_trending_set_shares_the_served_sets_slot() -> None:
    """The backfill replaces the served set with RENAME, which needs one slot."""
    from rtrec.features import TRENDING_KEY

    settings = Settings(work_dir="/nonexistent")
    scratch = StateKeys.of(settings, "rtrec:backfill:abc:")
    assert scratch.trending != TRENDING_KEY
    assert key_slot(scratch.trending.encode()) == key_slot(TRENDING_KEY.encode())


def test_group_and_item_keys_spread_over_slots_by_group() -> None:
    """Two consumer groups' states are in different slots (a cluster spreads them)."""
    a = StateKeys.of(Settings(work_dir="/nonexistent"))
    b = StateKeys.of(Settings.model_validate({"work_dir": "/x", "kafka": {"consumer_group": "o"}}))
    assert key_slot(a.offsets.encode()) != key_slot(b.offsets.encode())
    assert key_slot(a.user_prefix.encode() + b"u1") == key_slot(a.log.encode())
