"""The recommendation path without HTTP: a synthetic bundle and an in-memory feature source."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rtrec.features.definitions import count_names
from rtrec.serving.lifecycle import Loaded, load_dir
from rtrec.serving.retrieval import Engine, dense_row
from rtrec.serving.schemas import EXAMPLE_RECOMMEND, Filters, RecommendRequest
from rtrec.training.examples import dense_matrix

from rtrec.config import Settings, load_settings
from rtrec.errors import NotFound, Unavailable
from rtrec.logging import redact_id


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rtrec.serving.synthetic import synthetic_bundle

    return synthetic_bundle(tmp_path_factory.mktemp("b") / "b", n_items=200, n_users=20, seed=4)


@pytest.fixture(scope="module")
def loaded(bundle_dir: Path) -> Loaded:
    return load_dir(bundle_dir, "7", "test")


class Store:
    """Online features by user id; ``down`` makes every read fail like a dead Redis."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.down = False

    def __call__(self, user_ids: list[str]) -> list[dict[str, Any]]:
        if self.down:
            raise Unavailable("online store unreachable: connection refused")
        return [self.rows.get(u, {"recent_items": None}) for u in user_ids]


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def engine(tmp_path: Path, store: Store, loaded: Loaded) -> Engine:
    settings: Settings = load_settings(work_dir=tmp_path)
    settings.serving.max_k = 50
    out = Engine(settings, features=store)
    out.swap("champion", loaded)
    return out


def ids(out: dict[str, Any]) -> list[str]:
    return [i["item_id"] for i in out["items"]]


DENSE = [*sorted(count_names()), "secs_since_prev"]
"""The dense inputs a bundle trained on the stream's features carries."""
counts = st.one_of(st.none(), st.integers(-3, 10**9))
last_ms = st.one_of(st.none(), st.integers(0, 2 * 10**12))


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries({}, optional={n: counts for n in count_names()}),
    last_ms,
    st.integers(10**12, 2 * 10**12),
)
def test_dense_row_matches_training_transforms(
    online: dict[str, int | None], last: int | None, now_ms: int
) -> None:
    """Serving's row for a user's online features equals training's row for the same
    state (the frame ``rtrec.training.dataset`` writes: counts, seconds since the previous
    event, nulls where unknown), computed by training's own ``dense_matrix``."""
    row = dense_row({**online, "last_event_ms": last}, DENSE, now_ms)
    frame = pd.DataFrame(
        [
            {
                **{n: online.get(n) for n in count_names()},
                "secs_since_prev": None if not last else (now_ms - last) / 1000,
            }
        ]
    )
    assert row.shape == (1, len(DENSE)) and row.dtype == np.float32
    np.testing.assert_array_equal(row, dense_matrix(frame, DENSE))


def test_dense_row_of_an_unknown_user_is_trainings_first_event() -> None:
    """No online features at all: training's row for a user's first event (no counts,
    no previous event), i.e. the neutral values, not zeros everywhere."""
    row = dense_row({"recent_items": None}, DENSE, 1_750_000_000_000)
    first = dense_matrix(pd.DataFrame([{"secs_since_prev": None}]), DENSE)
    np.testing.assert_array_equal(row, first)
    assert row[0, -1] > 0 and not row[0, :-1].any()


def test_serving_gives_the_user_tower_what_training_gives_it_for_the_same_state(
    loaded: Loaded,
) -> None:
    """User state -> the model's dense input, both ways: training's evaluator takes it from
    the user's latest training-set row (``InputEncoder.user_state``: counts and seconds since
    the previous event, null where unknown); serving from the online store at the same
    moment (counts and ``last_event_ms``). Same state, same input, for a bundle's own
    dense names: a regular user, a first event, counts past any cap, an old last event,
    and a user with no state at all."""
    now = 1_750_000_000_000
    every = sorted(count_names())
    states: dict[str, tuple[dict[str, int | None], int | None]] = {
        "u1": ({n: 3 for n in every}, now - 90_000),
        "u2": ({"cnt_view_1h": 1, "cnt_click_7d": None}, None),
        "u3": ({"cnt_view_24h": 10**9, "cnt_purchase_7d": -2}, now - 40 * 86_400_000),
        "u4": ({"cnt_click_1h": 7}, now - 1),
    }
    seen = pd.DataFrame(
        [
            {
                "user_id": user,
                "item_id": "i1",
                "ts": now,
                **{n: counts.get(n) for n in every},
                "secs_since_prev": None if last is None else (now - last) / 1000,
            }
            for user, (counts, last) in states.items()
        ]
    )
    users = [*states, "u-without-state"]
    enc = loaded.bundle.encoders
    assert enc.dense == DENSE
    _, _, trained = enc.user_state(seen, users)
    served = np.vstack(
        [
            dense_row({**counts, "last_event_ms": last}, enc.dense, now)
            for counts, last in [*states.values(), ({}, None)]
        ]
    )
    assert trained.dtype == served.dtype == np.float32
    np.testing.assert_array_equal(served, trained)


def test_known_user_top_k_excludes_seen_and_filtered(engine: Engine, store: Store, loaded) -> None:
    base = engine.recommend(RecommendRequest(user_id="u1", k=20, exclude_seen=False))
    assert base["fallback"] is False and base["model_version"] == "7" and len(base["items"]) == 20
    seen = ids(base)[:4]
    store.rows["u1"] = {"recent_items": seen, "last_event_ms": 1}
    out = engine.recommend(RecommendRequest(user_id="u1", k=20))
    assert len(out["items"]) == 20 and not set(ids(out)) & set(seen)
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)
    cats = loaded.bundle.item_categories
    f = Filters(
        include_categories=["c1", "c2"], exclude_categories=["c3"], exclude_items=ids(out)[:2]
    )
    filtered = engine.recommend(RecommendRequest(user_id="u1", k=10, filters=f))
    for item in ids(filtered):
        assert {"c1", "c2"} & set(cats[item]) and "c3" not in cats[item]
    assert not set(ids(filtered)) & set(ids(out)[:2]) and not set(ids(filtered)) & set(seen)
    assert len(filtered["items"]) == 10


def test_k_is_clamped_to_max_k_and_catalog(engine: Engine, tmp_path: Path, store, loaded) -> None:
    assert len(engine.recommend(RecommendRequest(user_id="u2", k=1000))["items"]) == 50
    engine.settings.serving.max_k = 1000
    assert len(engine.recommend(RecommendRequest(user_id="u2", k=1000))["items"]) == 200


def test_cold_user_and_store_outage_get_flagged_fallbacks(
    engine: Engine, store: Store, loaded
) -> None:
    cold = engine.recommend(RecommendRequest(user_id="stranger", k=5))
    assert cold["fallback"] is True and cold["fallback_reason"].startswith("cold user")
    assert ids(cold) == loaded.bundle.popular_items[:5]
    # A cold user with fresh history (clicked just now) is personalised, not a fallback.
    store.rows["stranger"] = {"recent_items": ["i3", "i4"]}
    assert engine.recommend(RecommendRequest(user_id="stranger", k=5))["fallback"] is False
    store.down = True
    out = engine.recommend(RecommendRequest(user_id="u1", k=5))
    assert out["fallback"] is True and "unavailable" in out["fallback_reason"]
    assert len(out["items"]) == 5 and out["model_version"] == "7"


def test_unexpected_errors_become_fallbacks(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(engine, "_retrieve", boom)
    out = engine.recommend_or_fallback(RecommendRequest(**{**EXAMPLE_RECOMMEND, "user_id": "u1"}))
    assert out["fallback"] is True and "RuntimeError" in out["fallback_reason"]
    assert len(out["items"]) == EXAMPLE_RECOMMEND["k"]


def test_internal_error_log_has_the_traceback_but_not_the_user_id(
    engine: Engine,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(_: Any, req: RecommendRequest, *__: Any) -> Any:
        raise KeyError(req.user_id)  # a message that carries the raw id

    store.rows["u1-secret"] = {"recent_items": ["i3"]}  # has history: reaches retrieval
    monkeypatch.setattr(engine, "_retrieve", boom)
    with caplog.at_level("ERROR", logger="rtrec.serving.retrieval"):
        out = engine.recommend_or_fallback(RecommendRequest(user_id="u1-secret", k=3))
    assert out["fallback"] is True and len(out["items"]) == 3
    text = caplog.text
    assert "KeyError" in text and "Traceback" in text and "boom" in text
    assert "u1-secret" not in text and redact_id("u1-secret") in text


def test_no_model_yet_is_a_fallback_and_not_ready(tmp_path: Path, store: Store) -> None:
    engine = Engine(load_settings(work_dir=tmp_path), features=store)
    assert not engine.ready
    out = engine.recommend(RecommendRequest(user_id="u1"))
    assert out["fallback"] is True and out["model_version"] is None
    with pytest.raises(Unavailable):
        engine.similar("i1", 5)


def test_similar_items(engine: Engine) -> None:
    out = engine.similar("i5", 5)
    assert len(out["items"]) == 5 and "i5" not in ids(out)
    with pytest.raises(NotFound, match="nope"):
        engine.similar("nope", 5)


def test_swap_is_atomic_under_concurrent_requests(engine: Engine, bundle_dir: Path) -> None:
    other = load_dir(bundle_dir, "8", "test")
    errors: list[BaseException] = []
    versions: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                versions.append(engine.recommend(RecommendRequest(user_id="u3"))["model_version"])
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(20):
        engine.swap("champion", other if i % 2 == 0 else engine.models["champion"])
    engine.swap("champion", other)
    stop.set()
    for t in threads:
        t.join()
    assert not errors and set(versions) <= {"7", "8"}
    assert engine.recommend(RecommendRequest(user_id="u3"))["model_version"] == "8"
    engine.swap("challenger", other)
    engine.swap("challenger", None)
    assert set(engine.models) == {"champion"}


def test_synthetic_bundle_history_moves_the_user_vector(loaded: Loaded) -> None:
    b = loaded.bundle
    zeros = np.zeros((1, len(b.dense_names)), np.float32)
    a = b.user_vectors(["u1"], [[]], zeros)
    c = b.user_vectors(["u1"], [["i1", "i2"]], zeros)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert float((a @ c.T)[0, 0]) < 0.99  # a click changes the query, so results can change


def test_fallback_tops_up_short_trending_with_popular(engine: Engine, loaded) -> None:
    engine.popular.trending = ["i9", "i8"]
    out = engine.recommend(RecommendRequest(user_id="stranger-2", k=6))
    assert ids(out)[:2] == ["i9", "i8"] and len(out["items"]) == 6
    assert "trending+popular" in out["fallback_reason"]
    assert set(ids(out)[2:]) <= set(loaded.bundle.popular_items)


def _without_timing(out: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in out.items() if k not in ("server_ms", "request_id")}


def test_awaited_path_answers_exactly_what_the_blocking_path_answers(
    engine: Engine, store: Store, loaded: Loaded
) -> None:
    """The service awaits the feature read (``recommend_async``); the answers must be the
    blocking path's, item for item and score for score, on fixed inputs: warm users with
    and without exclude_seen, filters, k past the catalog, a cold user, an outage."""
    import asyncio

    items = loaded.bundle.item_ids
    store.rows["u1"] = {"recent_items": items[:7], "last_event_ms": 1_750_000_000_000}
    store.rows["u2"] = {"recent_items": items[50:52], "cnt_click_7d": 3}
    store.rows["fresh"] = {"recent_items": items[9:10]}
    f = Filters(include_categories=["c1"], exclude_categories=["c3"], exclude_items=items[:3])
    requests = [
        RecommendRequest(user_id="u1", k=20),
        RecommendRequest(user_id="u1", k=20, exclude_seen=False),
        RecommendRequest(user_id="u2", k=10, filters=f),
        RecommendRequest(user_id="u2", k=1000),
        RecommendRequest(user_id="fresh", k=5),
        RecommendRequest(user_id="stranger", k=5),
    ]
    for req in requests:
        blocking = engine.recommend_or_fallback(req)
        awaited = asyncio.run(engine.recommend_async(req))
        assert _without_timing(awaited) == _without_timing(blocking), req
    store.down = True
    blocking = engine.recommend_or_fallback(requests[0])
    engine.online.close()  # the failed read opened the breaker: start the other path alike
    awaited = asyncio.run(engine.recommend_async(requests[0]))
    assert awaited["fallback"] and _without_timing(awaited) == _without_timing(blocking)
