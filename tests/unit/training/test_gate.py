"""The gate's statistics and rule, on fixed inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rtrec.training.evaluate import rank
from rtrec.training.gate import (
    GateEvidence,
    GateRule,
    SliceInfo,
    UserScores,
    decide,
    evidence_tags,
    gather_evidence,
    paired_bootstrap,
)

from rtrec.errors import InvalidInput

SLICE = SliceInfo("gate", rows=100, users=4, start_ms=0, end_ms=86_400_000)


def scores(values: np.ndarray, items: list[str] | None = None) -> UserScores:
    """Per-user values, each user's whole score on one hit item (its own by default)."""
    users = np.array([f"u{i:04d}" for i in range(len(values))])
    hit_items = items or [f"i{i}" for i in range(len(values))]
    hits = pd.DataFrame({"user_id": users, "item_id": hit_items, "ndcg": values})
    return UserScores(users, np.asarray(values, dtype=float), hits)


def test_gain_is_the_ratio_of_means_and_a_constant_ratio_has_a_degenerate_interval() -> None:
    rng = np.random.default_rng(3)
    champ = rng.uniform(0.1, 1, 300)
    gain, low, high = paired_bootstrap(scores(champ * 1.1), scores(champ), samples=1000)
    assert gain == pytest.approx(0.1)
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)


def test_with_one_item_per_user_the_interval_matches_a_users_only_resample_roughly() -> None:
    """Item weights on private items only scale users: the interval stays near the
    users-only bootstrap's (a plain loop), a little wider."""
    rng = np.random.default_rng(3)
    champ = rng.uniform(0, 1, 300)
    noisy = np.clip(champ + rng.normal(0, 0.2, 300), 0, None)
    gain, low, high = paired_bootstrap(scores(noisy), scores(champ), samples=2000, seed=5)
    r = np.random.default_rng(11)
    direct = []
    for _ in range(2000):
        idx = r.integers(0, 300, 300)
        direct.append(noisy[idx].sum() / champ[idx].sum() - 1)
    lo_ref, hi_ref = np.percentile(direct, [2.5, 97.5])
    assert low < gain < high
    assert lo_ref - 0.06 < low < lo_ref + 0.01 and hi_ref - 0.01 < high < hi_ref + 0.06


def test_a_gain_carried_by_one_item_gets_a_wide_interval() -> None:
    """The seed-noise case: both models hit the same per-user amounts except on one item
    that many users share, where the challenger scores higher. Users-only resampling
    calls that certain; reweighting items does not."""
    n = 400
    base = np.full(n, 0.2)
    shared = ["hot" if i % 4 == 0 else f"i{i}" for i in range(n)]
    chal = base + np.where(np.arange(n) % 4 == 0, 0.05, 0.0)  # +6 % from one item
    two_way = paired_bootstrap(scores(chal, shared), scores(base, shared), samples=2000)
    users_only = paired_bootstrap(scores(chal), scores(base), samples=2000)
    assert two_way[0] == pytest.approx(users_only[0]) == pytest.approx(0.0625)
    assert users_only[1] > 0.02  # one-way: significant, beyond a 2 % margin
    assert two_way[1] <= 0.0 < two_way[2]  # two-way: the one item could be luck


def test_pairing_makes_the_interval_narrow_when_users_vary_but_the_gain_does_not() -> None:
    rng = np.random.default_rng(0)
    champ = rng.uniform(0.05, 1.0, 500)  # users differ a lot
    chal = champ * (1.02 + rng.normal(0, 0.005, 500))  # the model a little, everywhere
    _, low, high = paired_bootstrap(scores(chal), scores(champ), samples=1000)
    assert low > 0 and high - low < 0.04


def test_hits_from_the_evaluator_sum_to_the_per_user_scores() -> None:
    class Fixed:
        item_ids = ["a", "b", "c", "d", "e"]

        def score(self, seen: pd.DataFrame, users: list[str]) -> np.ndarray:
            return np.tile(np.array([5, 4, 3, 2, 1.0]), (len(users), 1))

    seen = pd.DataFrame({"user_id": ["u"], "item_id": ["a"]})
    target = pd.DataFrame({"user_id": ["u", "u", "v", "w"], "item_id": ["c", "e", "b", "z"]})
    s = UserScores.from_ranking(rank(Fixed(), seen, target, ks=(10,)))
    per_user = s.hits.groupby("user_id")["ndcg"].sum().reindex(s.users).fillna(0.0)
    np.testing.assert_allclose(per_user.to_numpy(), s.values)
    assert list(s.users) == ["u", "v", "w"] and s.values[2] == 0.0  # w's item is unknown


def test_bad_inputs_are_refused_by_name() -> None:
    with pytest.raises(InvalidInput, match="aligned"):
        paired_bootstrap(scores(np.ones(3)), scores(np.ones(4)))
    with pytest.raises(InvalidInput, match="scores 0"):
        paired_bootstrap(scores(np.ones(3)), scores(np.zeros(3)))
    with pytest.raises(InvalidInput, match="confidence"):
        GateRule(confidence=1.0)


def test_rule_promotes_on_margin_and_lower_bound() -> None:
    def ev(gain: float, low: float, high: float) -> GateEvidence:
        return GateEvidence(SLICE, "ndcg@10", 0.3, "1", 0.28, gain, low, high, 0.95, 1000)

    assert decide(ev(0.05, 0.01, 0.09), margin=0.02).promoted
    assert decide(ev(0.05, -0.019, 0.09), margin=0.02).promoted  # within the margin below
    assert not decide(ev(0.05, -0.03, 0.12), margin=0.02).promoted  # plausibly worse
    assert not decide(ev(0.01, 0.005, 0.02), margin=0.02).promoted  # significant, too small
    first = gather_evidence(SLICE, scores(np.ones(4)), None, champion_version=None, rule=GateRule())
    out = decide(first, margin=0.02)
    assert out.promoted and "no champion yet" in out.reason and "4 users" in out.reason
    reason = decide(ev(0.05, 0.01, 0.09), margin=0.02).reason
    assert "1970-01-01T00:00:00+00:00 .. 1970-01-02T00:00:00+00:00" in reason
    assert "+5.00%" in reason and "+1.00% .. +9.00%" in reason


def test_evidence_aligns_the_champion_round_trips_and_becomes_tags() -> None:
    rng = np.random.default_rng(1)
    champ = rng.uniform(0.1, 1, 50)
    chal = scores(champ * 1.2)
    shuffled = scores(champ)
    order = rng.permutation(50)
    shuffled = UserScores(shuffled.users[order], shuffled.values[order], shuffled.hits)
    e = gather_evidence(SLICE, chal, shuffled, champion_version="3", rule=GateRule(samples=200))
    assert e.gain == pytest.approx(0.2) and e.champion == pytest.approx(champ.mean())
    assert GateEvidence.from_dict(e.to_dict()) == e
    tags = evidence_tags(e, margin=0.02)
    assert tags["gate.champion_version"] == "3" and tags["gate.margin"] == "0.02"
    assert float(tags["gate.gain"]) == pytest.approx(0.2, abs=1e-6)
    assert all(isinstance(v, str) for v in tags.values())
