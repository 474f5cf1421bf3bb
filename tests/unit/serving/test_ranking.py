"""The two-stage request path without HTTP: a synthetic bundle with a synthetic ranker, an
in-memory feature source. Ranked answers, filters on the ranked list, and the flagged
fallback to retrieval order when the ranker is unavailable or raises."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rtrec.serving import metrics
from rtrec.serving.lifecycle import Loaded, load_dir
from rtrec.serving.ranking import UNAVAILABLE, RankerStage
from rtrec.serving.retrieval import Engine
from rtrec.serving.schemas import Filters, RecommendRequest

from rtrec.config import load_settings

HISTORY = [f"i{j}" for j in range(0, 60, 3)]


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rtrec.serving.synthetic import synthetic_bundle

    return synthetic_bundle(tmp_path_factory.mktemp("b") / "b", n_items=300, n_users=20, seed=4)


@pytest.fixture(scope="module")
def ranked_dir(single_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rtrec.training import add_synthetic_ranker

    out = tmp_path_factory.mktemp("r") / "b"
    shutil.copytree(single_dir, out)
    add_synthetic_ranker(out, neighbours=20, trees=40, leaves=15, seed=1)
    return out


def _engine(tmp_path: Path, loaded: Loaded) -> Engine:
    settings = load_settings(work_dir=tmp_path)
    settings.serving.max_k = 100
    rows = {"u1": {"recent_items": HISTORY, "last_event_ms": 1_764_000_000_000, "cnt_view_7d": 9}}
    engine = Engine(settings, features=lambda ids: [rows.get(u, {}) for u in ids])
    engine.swap("champion", loaded)
    return engine


def _ids(out: dict[str, Any]) -> list[str]:
    return [i["item_id"] for i in out["items"]]


def test_a_ranked_answer_is_the_rankers_order_through_the_filters(
    tmp_path: Path, ranked_dir: Path, single_dir: Path
) -> None:
    loaded = load_dir(ranked_dir, "3", "test")
    assert loaded.status["ranker"]["state"] == "loaded"
    engine = _engine(tmp_path, loaded)
    out = engine.recommend(RecommendRequest(user_id="u1", k=20))
    assert out["fallback"] is False and len(out["items"]) == 20
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True) and not set(_ids(out)) & set(HISTORY)
    # The same user on the single-stage bundle: retrieval order, another list.
    single = _engine(tmp_path, load_dir(single_dir, "2", "test"))
    plain = single.recommend(RecommendRequest(user_id="u1", k=20))
    assert plain["fallback"] is False and _ids(plain) != _ids(out)
    # Filters apply to the ranked list; a narrow one is filled from retrieval order.
    cats = loaded.bundle.item_categories
    only = RecommendRequest(user_id="u1", k=30, filters=Filters(include_categories=["c2"]))
    got = engine.recommend(only)
    assert got["fallback"] is False and len(got["items"]) == 30
    assert all("c2" in cats[i] for i in _ids(got))


def test_an_unavailable_ranker_serves_retrieval_order_flagged(
    tmp_path: Path, ranked_dir: Path, single_dir: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(ranked_dir, broken)
    meta = broken / "ranker" / "ranker.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "trees": 1}))
    loaded = load_dir(broken, "4", "test")
    assert loaded.status["ranker"]["state"] == "unavailable"
    assert "checksum" in loaded.status["ranker"]["error"]
    engine = _engine(tmp_path, loaded)
    before = metrics.FALLBACKS.labels(UNAVAILABLE)._value.get()
    out = engine.recommend(RecommendRequest(user_id="u1", k=10))
    single = _engine(tmp_path, load_dir(single_dir, "2", "test"))
    plain = single.recommend(RecommendRequest(user_id="u1", k=10))
    assert _ids(out) == _ids(plain)  # retrieval order: what the single-stage bundle answers
    assert out["fallback"] is True and out["fallback_reason"].startswith(f"{UNAVAILABLE}: ")
    assert "served retrieval order" in out["fallback_reason"]
    assert engine.degradations.status()["counts"][UNAVAILABLE] == 1
    metrics.flush()
    assert metrics.FALLBACKS.labels(UNAVAILABLE)._value.get() == before + 1


def test_a_ranker_that_raises_serves_retrieval_order_flagged(
    tmp_path: Path, ranked_dir: Path
) -> None:
    loaded = load_dir(ranked_dir, "3", "test")

    class Broken:
        sources = loaded.ranker.ranker.sources

        def search(self, bundle: object, hist: object, vec: object) -> None:
            raise RuntimeError("trees gone")

    bad = Loaded(loaded.bundle, "3", "test", RankerStage(Broken(), "v"))
    out = _engine(tmp_path, bad).recommend(RecommendRequest(user_id="u1", k=10))
    assert out["fallback"] is True and "RuntimeError: trees gone" in out["fallback_reason"]
    assert len(out["items"]) == 10


def test_a_user_without_history_gets_the_cold_fallback_as_before(
    tmp_path: Path, ranked_dir: Path
) -> None:
    engine = _engine(tmp_path, load_dir(ranked_dir, "3", "test"))
    out = engine.recommend(RecommendRequest(user_id="stranger", k=5))
    assert out["fallback"] is True and out["fallback_reason"].startswith("cold user")
    assert np.isfinite([i["score"] for i in out["items"]]).all()
