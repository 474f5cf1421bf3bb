"""The gate's statistics and rule, on fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from rtrec.errors import InvalidInput
from training.gate import (
    GateEvidence,
    GateRule,
    SliceInfo,
    decide,
    evidence_tags,
    gather_evidence,
    paired_bootstrap,
)

SLICE = SliceInfo("gate", rows=100, users=4, start_ms=0, end_ms=86_400_000)


def test_bootstrap_gain_is_the_ratio_of_means_and_its_interval_matches_a_direct_resample() -> None:
    rng = np.random.default_rng(3)
    champ = rng.uniform(0, 1, 300)
    chal = champ * 1.1
    gain, low, high = paired_bootstrap(chal, champ, samples=1000, seed=5)
    assert gain == pytest.approx(0.1)
    # Every resample of a constant ratio has the same ratio: a degenerate interval.
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)
    noisy = champ + rng.normal(0, 0.2, 300)
    gain, low, high = paired_bootstrap(noisy, champ, samples=2000, seed=5)
    # The same statistic by a plain loop over resamples.
    r = np.random.default_rng(11)
    direct = []
    for _ in range(2000):
        idx = r.integers(0, 300, 300)
        direct.append(noisy[idx].sum() / champ[idx].sum() - 1)
    lo_ref, hi_ref = np.percentile(direct, [2.5, 97.5])
    assert low < gain < high
    assert low == pytest.approx(lo_ref, abs=0.01) and high == pytest.approx(hi_ref, abs=0.01)


def test_pairing_makes_the_interval_narrow_when_users_vary_but_the_gain_does_not() -> None:
    rng = np.random.default_rng(0)
    champ = rng.uniform(0.0, 1.0, 500)  # users differ a lot
    chal = champ + 0.02 + rng.normal(0, 0.01, 500)  # the model differs a little, everywhere
    _, low, high = paired_bootstrap(chal, champ, samples=1000)
    assert low > 0 and high - low < 0.02


def test_bad_inputs_are_refused_by_name() -> None:
    with pytest.raises(InvalidInput, match="aligned"):
        paired_bootstrap(np.ones(3), np.ones(4))
    with pytest.raises(InvalidInput, match="scores 0"):
        paired_bootstrap(np.ones(3), np.zeros(3))
    with pytest.raises(InvalidInput, match="confidence"):
        GateRule(confidence=1.0)


def test_rule_promotes_on_margin_and_lower_bound() -> None:
    def ev(gain: float, low: float, high: float) -> GateEvidence:
        return GateEvidence(SLICE, "ndcg@10", 0.3, "1", 0.28, gain, low, high, 0.95, 1000)

    assert decide(ev(0.05, 0.01, 0.09), margin=0.02).promoted
    assert decide(ev(0.05, -0.019, 0.09), margin=0.02).promoted  # within the margin below
    assert not decide(ev(0.05, -0.03, 0.12), margin=0.02).promoted  # plausibly worse
    assert not decide(ev(0.01, 0.005, 0.02), margin=0.02).promoted  # significant, too small
    first = gather_evidence(SLICE, np.ones(4), None, champion_version=None, rule=GateRule())
    out = decide(first, margin=0.02)
    assert out.promoted and "no champion yet" in out.reason and "4 users" in out.reason
    reason = decide(ev(0.05, 0.01, 0.09), margin=0.02).reason
    assert "1970-01-01T00:00:00+00:00 .. 1970-01-02T00:00:00+00:00" in reason
    assert "+5.00%" in reason and "+1.00% .. +9.00%" in reason


def test_evidence_round_trips_and_becomes_tags() -> None:
    rng = np.random.default_rng(1)
    champ = rng.uniform(0, 1, 50)
    e = gather_evidence(SLICE, champ * 1.2, champ, champion_version="3", rule=GateRule(samples=200))
    assert GateEvidence.from_dict(e.to_dict()) == e
    tags = evidence_tags(e, margin=0.02)
    assert tags["gate.champion_version"] == "3" and tags["gate.margin"] == "0.02"
    assert float(tags["gate.gain"]) == pytest.approx(0.2, abs=1e-6)
    assert all(isinstance(v, str) for v in tags.values())
