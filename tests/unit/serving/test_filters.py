"""The vectorised filter picks exactly what the item-by-item check picks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rtrec.serving.filters import RowFilter, passing
from rtrec.serving.schemas import Filters, RecommendRequest


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    from rtrec.serving.synthetic import synthetic_bundle
    from rtrec.training import load_bundle

    d = synthetic_bundle(tmp_path_factory.mktemp("b") / "b", n_items=400, n_categories=6, seed=3)
    return load_bundle(Path(d), use_gpu=False)


def _request(rng: np.random.Generator, items: list[str]) -> tuple[RecommendRequest, list[str]]:
    """A random request: any mix of seen items, excluded items (some unknown) and category
    filters (some naming unknown categories), or none."""
    cats = [f"c{j}" for j in range(6)] + ["nope"]
    history = list(rng.choice(items, size=int(rng.integers(0, 40)), replace=False))
    filters = None
    if rng.random() < 0.8:
        pick = lambda n: [str(c) for c in rng.choice(cats, size=n, replace=False)]  # noqa: E731
        filters = Filters(
            include_categories=pick(int(rng.integers(1, 3))) if rng.random() < 0.5 else None,
            exclude_categories=pick(int(rng.integers(0, 2))),
            exclude_items=[*rng.choice(items, size=int(rng.integers(0, 30))), "unknown-item"],
        )
    req = RecommendRequest(
        user_id="u1",
        k=int(rng.integers(1, 60)),
        exclude_seen=bool(rng.random() < 0.7),
        filters=filters,
    )
    return req, history


def test_row_filter_picks_what_the_item_by_item_check_picks(bundle) -> None:
    rng = np.random.default_rng(0)
    items = bundle.item_ids
    for _ in range(300):
        req, history = _request(rng, items)
        rows = rng.permutation(len(items))[: int(rng.integers(0, 400))]
        if rng.random() < 0.3:  # a padded search result: -1 at its end
            rows = np.concatenate([rows, [-1, -1]])
        scores = rng.random(len(rows)).astype(np.float32)
        keep = RowFilter(bundle, req, history).first(rows, req.k)
        got = list(zip(bundle.ids_of(rows[keep]), scores[keep].tolist(), strict=True))
        banned = set(req.filters.exclude_items) if req.filters else set()
        if req.exclude_seen:
            banned.update(history)
        want = passing(
            bundle.item_categories,
            req,
            zip(bundle.ids_of(rows), scores, strict=True),
            banned,
            req.k,
        )
        assert got == want
        assert all(i is not None and i not in banned for i, _ in got)


def test_only_unknown_categories_included_lets_nothing_through(bundle) -> None:
    req = RecommendRequest(user_id="u1", filters=Filters(include_categories=["nope"]))
    assert not RowFilter(bundle, req, []).mask(np.arange(len(bundle.item_ids))).any()
