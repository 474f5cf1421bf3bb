"""Feast's offline side of the stream views: historical retrieval is point in time."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from rtrec.features import count_names, historical_features
from rtrec.streaming import publish
from rtrec.streaming.processor import StreamProcessor

from rtrec.config import Settings, load_settings
from rtrec.data import SyntheticConfig, generate
from tests.stream_helpers import isolated, reference

pytestmark = pytest.mark.integration


def test_historical_stream_features_are_point_in_time(stack: Settings, tmp_path: Path) -> None:
    s = isolated(stack, tmp_path)
    data = generate(SyntheticConfig.small(seed=11, n_users=80, n_items=60, n_events=4000))
    events = data.events.reset_index(drop=True)
    assert events["ts"].is_monotonic_increasing
    pairs = list(data.iter_keyed_event_json())
    cut = len(pairs) // 2
    # Two runs, each ending with a flush: every user active in both halves has two
    # offline rows, the state after the first half and the state after everything.
    for part in (pairs[:cut], pairs[cut:]):
        publish(s, part, progress=False)
        StreamProcessor(s).run(max_idle_s=2)
    boundary = int(events["ts"].iloc[cut - 1])
    early, final = reference(events.iloc[:cut]), reference(events)
    first_ts = events.groupby("user_id")["ts"].min()
    rows = []
    for user in final:
        rows += [
            (user, int(first_ts[user]) - 1, None),  # before any event: nothing
            (user, boundary, early.get(user)),  # between the runs: the first run's state
            (user, final[user]["last_event_ms"] + 1, final[user]),  # after: everything
        ]
    entity = pd.DataFrame(
        {
            "user_id": [u for u, _, _ in rows],
            "event_timestamp": pd.to_datetime([t for _, t, _ in rows], unit="ms", utc=True),
        }
    )
    names = ["recent_items", "last_event_ms", *count_names()]
    out = historical_features(s, entity, [f"user_stream:{n}" for n in names])
    got = {(r.user_id, int(r.event_timestamp.value // 1_000_000)): r for r in out.itertuples()}
    for user, at, want in rows:
        row = got[(user, at)]
        if want is None:
            assert pd.isna(row.last_event_ms), (user, at)
            continue
        assert int(row.last_event_ms) <= at  # never a value from the future
        have = {n: getattr(row, n) for n in names}
        have["recent_items"] = list(have["recent_items"])
        have = {k: v if k == "recent_items" else int(v) for k, v in have.items()}
        assert have == want, (user, at)


def test_apply_against_a_dead_redis_fails_loudly_and_writes_nothing(tmp_path: Path) -> None:
    from rtrec.features import apply

    from rtrec.errors import Unavailable
    from tests.conftest import free_port

    dead = free_port()  # bound and released: nothing listens there
    s = load_settings(work_dir=tmp_path, redis={"url": f"redis://:hunter2@127.0.0.1:{dead}/0"})
    with pytest.raises(Unavailable) as info:
        apply(s)
    message = str(info.value)
    assert f"redis://:***@127.0.0.1:{dead}/0" in message and "ConnectionError" in message
    assert "hunter2" not in message
    repo = Path(str(s.feast.repo_path))
    assert not (repo / "online.db").exists() and not (repo / "feature_store.yaml").exists()
    assert not (repo / "registry.db").exists()


def test_password_protected_redis_serves_features(tmp_path: Path) -> None:
    """The password in ``redis.url`` reaches Feast: write and read back through it."""
    import shutil
    import subprocess

    import redis
    from rtrec.features import apply, online_features, write_user_features

    from rtrec.errors import Unavailable
    from tests.conftest import free_port
    from tests.stream_helpers import wait_for

    port = free_port()
    server = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            "s3cr@t",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://:s3cr%40t@127.0.0.1:{port}/5"

        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(url).ping())
            except redis.RedisError:
                return False

        wait_for(answers, 10, "the password-protected redis-server")
        s = load_settings(work_dir=tmp_path / "w", redis={"url": url})
        apply(s)
        stamp = pd.Timestamp("2025-01-01", tz="UTC")
        row = {"user_id": "u1", "recent_items": [["i3", "i2"]], "last_event_ms": [7]}
        row |= {n: [1] for n in count_names()} | {"written_ms": [7], "event_timestamp": [stamp]}
        write_user_features(s, pd.DataFrame(row))
        got = online_features(s, ["u1"])[0]
        assert got["recent_items"] == ["i3", "i2"] and got["last_event_ms"] == 7
        assert got["cnt_click_1h"] == 1
        assert redis.Redis.from_url(url).dbsize() > 0  # in db 5 of the protected server
        no_password = load_settings(
            work_dir=tmp_path / "w2", redis={"url": f"redis://127.0.0.1:{port}/5"}
        )
        with pytest.raises(Unavailable, match=r"(?i)authentication"):
            apply(no_password)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_async_reader_reads_what_feast_reads_value_for_value(
    stack: Settings, tmp_path: Path
) -> None:
    """The serving path's asyncio reader against Feast's own read, for rows written both
    by Feast (``write_to_online_store``) and by the stream processor's writer."""
    import asyncio

    from rtrec.features import OnlineReader, apply, get_store, online_features, write_rows
    from rtrec.features.definitions import USER_STREAM_VIEW, user_stream_fields

    s = isolated(stack, tmp_path)
    apply(s)
    fields = user_stream_fields()
    now_ms = 1_760_000_000_123

    def row(n: int, history: list[str]) -> dict[str, object]:
        counts = {name: (n * 977 + j) * (1 if j % 2 else 5000) for j, name in enumerate(fields)}
        return {
            **counts,
            "recent_items": history,
            "last_event_ms": now_ms - n,
            "written_ms": now_ms,
        }

    histories = {
        "u-plain": ["i1", "i2", "i3"],
        "u-long": [f"i{j}" for j in range(200)],
        "u-unicode": ["é-ß", "项目", "i 9"],
        "u-one": ["i42"],
    }
    by_writer = {f"w-{u}": row(n, h) for n, (u, h) in enumerate(histories.items())}
    by_feast = {f"f-{u}": row(n + 10, h) for n, (u, h) in enumerate(histories.items())}
    write_rows(s, USER_STREAM_VIEW, [(u, v, now_ms) for u, v in by_writer.items()])
    frame = pd.DataFrame(
        [
            {"user_id": u, **v, "event_timestamp": pd.Timestamp(now_ms, unit="ms", tz="UTC")}
            for u, v in by_feast.items()
        ]
    )
    get_store(s).write_to_online_store(USER_STREAM_VIEW, frame)
    users = [*by_writer, *by_feast, "never-seen"]

    reader = OnlineReader.for_users(s)
    reader.prepare()

    async def read_all() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        try:
            batch = await reader.read(users)
            one_by_one = [(await reader.read([u]))[0] for u in users]
            return batch, one_by_one
        finally:
            await reader.aclose()

    batch, one_by_one = asyncio.run(read_all())
    feast = online_features(s, users)
    assert batch == feast and one_by_one == feast
    for user, want in {**by_writer, **by_feast}.items():
        got = feast[users.index(user)]
        assert got == {name: want[name] for name in fields}, user  # what was written
    assert all(v is None for v in feast[-1].values())
