"""The synthetic users' ground-truth taste and the click model on it."""

from __future__ import annotations

import numpy as np
import pytest

from rtrec.data import ShiftConfig, SyntheticConfig, generate
from rtrec.data.ground_truth import ground_truth
from rtrec.errors import InvalidInput

CFG = SyntheticConfig.small(n_users=400, n_items=300, n_events=30_000, days=14)


def test_taste_is_a_distribution_over_the_catalog_before_and_after_the_shift() -> None:
    truth = ground_truth(CFG)
    ids = [f"i{i}" for i in range(CFG.n_items)]
    for user in ("u0", "u17", "u399"):
        taste = truth.taste(user, ids)
        assert taste.min() >= 0 and taste.sum() == pytest.approx(1.0)
    shifted = CFG.model_copy(update={"shift": ShiftConfig(at_fraction=0.5)})
    after = ground_truth(shifted, after_shift=True)
    assert len(after.item_index) > CFG.n_items  # the shift's new items
    assert after.taste("u3", list(after.item_index)).sum() == pytest.approx(1.0)
    assert truth.taste("u0", ["not-an-item"]).tolist() == [0.0]


def test_taste_explains_the_generated_events_better_than_popularity() -> None:
    """The data set generate(CFG) makes was drawn from this taste: its events are far
    likelier under it than under the observed item popularity."""
    generated = generate(CFG).events
    events = generated.sample(3000, random_state=0)
    truth = ground_truth(CFG)
    popularity = generated["item_id"].value_counts(normalize=True)
    pairs = zip(events.user_id, events.item_id, strict=True)
    by_taste = np.mean([np.log(truth.taste(u, [i])[0]) for u, i in pairs])
    by_popularity = np.mean(np.log(popularity.loc[events.item_id].to_numpy()))
    assert by_taste > by_popularity + 0.5


def test_click_probability_falls_with_position_and_rises_with_taste() -> None:
    truth = ground_truth(CFG)
    ids = [f"i{i}" for i in range(CFG.n_items)]
    taste = truth.taste("u5", ids)
    liked, disliked = ids[int(taste.argmax())], ids[int(taste.argmin())]
    top = truth.click_probability("u5", [liked, disliked])
    assert 0 < top[1] < top[0] <= 1
    shown = [disliked, *ids[:8], liked]
    last = truth.click_probability("u5", shown, position_decay=1.0)[-1]
    assert last == pytest.approx(top[0] / 10)  # examined 1/10 as often at position 10
    flat = truth.click_probability("u5", shown, position_decay=0.0)[-1]
    assert flat == pytest.approx(top[0])
    with pytest.raises(InvalidInput, match="attraction_scale must be > 0"):
        truth.click_probability("u5", ids, attraction_scale=0)
    with pytest.raises(InvalidInput, match=r"'x9' is not one of the generated u0\.\.u399"):
        truth.taste("x9", ids)
    with pytest.raises(InvalidInput, match="after_shift needs a config with a shift"):
        ground_truth(CFG, after_shift=True)
