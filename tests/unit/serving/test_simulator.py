"""The simulated users click as the click model says (the HTTP side runs against a real
service in the experiment benchmark)."""

from __future__ import annotations

import numpy as np
import pytest
from rtrec.serving.simulator import ClickModel, SimulatedUsers, SimulationResult

from rtrec.data import SyntheticConfig
from rtrec.data.ground_truth import ground_truth
from rtrec.errors import InvalidInput

CFG = SyntheticConfig.small(n_users=200, n_items=200, n_events=10_000, days=7)


def test_clicks_follow_the_click_model() -> None:
    truth = ground_truth(CFG)
    model = ClickModel(attraction_scale=0.2, position_decay=0.5)
    users = SimulatedUsers(truth, base_url="http://127.0.0.1:1", click_model=model, seed=3)
    shown = [f"i{i}" for i in range(10)]
    expected = truth.click_probability("u7", shown, attraction_scale=0.2, position_decay=0.5)
    draws = 20_000
    counts = np.zeros(len(shown))
    for _ in range(draws):
        for position in users.clicked_positions("u7", shown):
            counts[position - 1] += 1
    se = np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(counts / draws - expected) <= 5 * se + 1e-9)
    users.client.close()


def test_result_counts_per_variant_and_experiment() -> None:
    result = SimulationResult()
    result.add({"variant": "champion", "experiment": "1-vs-2"}, 0)
    result.add({"variant": "challenger", "experiment": "1-vs-2"}, 2)
    result.add({"variant": "champion", "experiment": None}, 1)
    assert result.answers == 3 and result.clicks == 3
    assert result.by_variant["champion"] == {"answers": 2, "clicks": 1, "clicked_answers": 1}
    assert result.by_variant["challenger"] == {"answers": 1, "clicks": 2, "clicked_answers": 1}
    assert result.to_dict()["experiments"] == {"1-vs-2": 2, "none": 1}


def test_no_users_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no users to simulate"):
        SimulatedUsers(ground_truth(CFG), base_url="http://127.0.0.1:1", users=[])
