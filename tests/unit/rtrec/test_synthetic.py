"""The synthetic generator: skew, taste, sessions, determinism, shift, learnability, speed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rtrec.data import Dataset, ShiftConfig, SyntheticConfig, generate
from rtrec.errors import InvalidInput
from rtrec.events import EVENT_TYPES


@pytest.fixture(scope="module")
def small() -> Dataset:
    return generate(SyntheticConfig.small())


@pytest.fixture(scope="module")
def shifted() -> Dataset:
    return generate(SyntheticConfig.small(shift=ShiftConfig()))


def _primary_category(ds: Dataset) -> pd.Series:
    """Event -> primary category of its item."""
    first = ds.items.set_index("item_id")["categories"].str[0]
    return ds.events["item_id"].map(first)


def _tv_distance(a: pd.Series, b: pd.Series) -> float:
    """Total variation distance between the value distributions of two series."""
    pa_, pb = a.value_counts(normalize=True), b.value_counts(normalize=True)
    return 0.5 * float(pa_.sub(pb, fill_value=0.0).abs().sum())


def test_small_preset_shape_and_contract(small: Dataset) -> None:
    small.validate()
    assert len(small.events) == 100_000
    assert len(small.users) == 2_000
    assert len(small.items) == 1_000
    assert set(small.events["event_type"]) == set(EVENT_TYPES)
    ts = small.events["ts"].to_numpy()
    assert np.all(np.diff(ts) >= 0)
    span_days = (ts[-1] - ts[0]) / 86_400_000
    assert 25 < span_days <= 30


def test_event_mix_order(small: Dataset) -> None:
    counts = small.events["event_type"].value_counts()
    assert counts["view"] > 2 * counts["click"]
    assert counts["click"] > counts["add_to_cart"] > counts["purchase"]
    assert counts["rating"] > 0.02 * len(small.events)
    ratings = small.events.loc[small.events["event_type"] == "rating", "value"]
    assert ratings.between(1, 5).all()
    others = small.events.loc[small.events["event_type"].isin(["view", "click"]), "value"]
    assert others.isna().all()


def test_item_popularity_is_zipf_like(small: Dataset) -> None:
    counts = small.events["item_id"].value_counts().to_numpy()
    top1 = counts[: len(small.items) // 100].sum() / counts.sum()
    top20 = counts[: len(small.items) // 5].sum() / counts.sum()
    assert top1 > 0.12  # uniform popularity would give 0.01
    assert top20 > 0.6


def test_users_stick_to_their_taste(small: Dataset) -> None:
    """Most of a user's events fall in the 3 categories they use most (of 20)."""
    ev = small.events.assign(cat=_primary_category(small))
    active = ev.groupby("user_id").filter(lambda g: len(g) >= 30)
    top3_share = (
        active.groupby("user_id")["cat"]
        .apply(lambda c: c.value_counts().iloc[:3].sum() / len(c))
        .mean()
    )
    global_top3 = ev["cat"].value_counts(normalize=True).iloc[:3].sum()
    assert top3_share > 0.6
    assert top3_share > global_top3 + 0.3


def test_sessions_are_bursty_and_sequential(small: Dataset) -> None:
    ev = small.events.assign(cat=_primary_category(small)).sort_values(
        ["user_id", "ts"], kind="stable"
    )
    same_user = ev["user_id"].to_numpy()[1:] == ev["user_id"].to_numpy()[:-1]
    gap_s = np.diff(ev["ts"].to_numpy())[same_user] / 1000
    assert np.median(gap_s) < 120  # consecutive events of a user are mostly in one burst
    in_session = gap_s < 600
    cats = ev["cat"].to_numpy()
    same_cat = (cats[1:] == cats[:-1])[same_user][in_session].mean()
    base = (ev["cat"].value_counts(normalize=True) ** 2).sum()
    assert same_cat > base + 0.3
    items = ev["item_id"].to_numpy()
    same_item = (items[1:] == items[:-1])[same_user][in_session].mean()
    assert same_item > 0.1  # funnel: view then click/cart/purchase of the same item


def test_deterministic_under_seed() -> None:
    cfg = SyntheticConfig.small(n_events=20_000, shift=ShiftConfig())
    a, b = generate(cfg), generate(cfg)
    for name in ("users", "items", "events"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    c = generate(cfg.model_copy(update={"seed": cfg.seed + 1}))
    assert not a.events["item_id"].equals(c.events["item_id"])
    assert not a.events["ts"].equals(c.events["ts"])


def _before_after(ds: Dataset, at_ts: int) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    ev = ds.events.assign(cat=_primary_category(ds))
    before, after = ev[ev["ts"] < at_ts], ev[ev["ts"] >= at_ts]
    return before["cat"], after["cat"], before["item_id"], after["item_id"]


def test_shift_is_visible_and_absent_without_it(small: Dataset, shifted: Dataset) -> None:
    at_ts = shifted.meta["shift_ts"]
    assert at_ts is not None
    cb, ca, ib, ia = _before_after(shifted, at_ts)
    sb, sa, jb, ja = _before_after(small, at_ts)
    cat_shift, cat_still = _tv_distance(cb, ca), _tv_distance(sb, sa)
    item_shift, item_still = _tv_distance(ib, ia), _tv_distance(jb, ja)
    assert cat_shift > 0.15 and cat_still < 0.05
    assert item_shift > 0.4 and item_still < 0.2
    assert item_shift > 2.5 * item_still


def test_new_items_appear_only_after_creation(shifted: Dataset) -> None:
    at_ts = shifted.meta["shift_ts"]
    new = shifted.items[shifted.items["created_ts"] == at_ts]["item_id"]
    assert len(new) == ShiftConfig().new_items
    ev = shifted.events
    on_new = ev[ev["item_id"].isin(new)]
    assert (on_new["ts"] >= at_ts).all()
    share_after = len(on_new) / int((ev["ts"] >= at_ts).sum())
    assert share_after > 0.1  # new items become popular
    created = ev["item_id"].map(shifted.items.set_index("item_id")["created_ts"])
    assert (ev["ts"] >= created).all()
    signup = ev["user_id"].map(shifted.users.set_index("user_id")["signup_ts"])
    assert (ev["ts"] >= signup).all()


def test_history_beats_most_popular_on_temporal_split(small: Dataset) -> None:
    """Learnability: user-category history x in-category popularity beats global top-k."""
    ev = small.events
    split = int(ev["ts"].quantile(0.8))
    train, test = ev[ev["ts"] < split], ev[ev["ts"] >= split]
    items = small.items["item_id"].to_numpy()
    item_idx = {i: k for k, i in enumerate(items)}
    cat_names = sorted({c for cats in small.items["categories"] for c in cats})
    cat_of = np.array([cat_names.index(c[0]) for c in small.items["categories"]])
    pop = np.bincount(train["item_id"].map(item_idx), minlength=len(items)).astype(float)
    users = sorted(set(train["user_id"]) & set(test["user_id"]))
    u_idx = {u: k for k, u in enumerate(users)}
    tr = train[train["user_id"].isin(u_idx)]
    pref = np.zeros((len(users), len(cat_names)))
    np.add.at(pref, (tr["user_id"].map(u_idx), cat_of[tr["item_id"].map(item_idx)]), 1.0)
    pref = (pref + 0.1) / (pref + 0.1).sum(axis=1, keepdims=True)
    cat_pop = np.bincount(cat_of, weights=pop, minlength=len(cat_names))
    scores = pref[:, cat_of] * (pop / cat_pop[cat_of])[None, :]
    k = 20
    personal = np.argsort(-scores, axis=1)[:, :k]
    popular = np.argsort(-pop)[:k]
    te = test[test["user_id"].isin(u_idx)]
    truth = [set(g.map(item_idx)) for _, g in te.groupby("user_id")["item_id"]]
    order = [u_idx[u] for u in te.groupby("user_id").groups]
    pairs = list(zip(truth, order, strict=True))
    recall_p = np.mean([len(t & set(personal[u])) / len(t) for t, u in pairs])
    recall_m = np.mean([len(t & set(popular)) / len(t) for t, _ in pairs])
    assert recall_p > 1.4 * recall_m  # measured 1.8x on the small preset


def test_config_rejects_bad_values() -> None:
    with pytest.raises(InvalidInput, match="event_mix"):
        SyntheticConfig.small(event_mix={"like": 1.0})
    with pytest.raises(InvalidInput, match="n_items"):
        SyntheticConfig.small(n_items=5, n_categories=10)
    with pytest.raises(InvalidInput, match="shift"):
        generate(SyntheticConfig.small(n_events=100, shift=ShiftConfig(at_ts=1)))


def test_the_default_config_with_a_shift_makes_a_million_events_in_time_order() -> None:
    """The size the demo and benchmarks use; its speed is ``bench/generator.py``'s figure,
    not a timing assertion here (a loaded CI machine would fail it for nothing)."""
    ds = generate(SyntheticConfig(shift=ShiftConfig()))
    assert len(ds.events) == 1_000_000
    assert ds.events["ts"].is_monotonic_increasing
