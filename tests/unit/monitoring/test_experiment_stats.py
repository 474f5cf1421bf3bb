"""The readout's statistics against scipy and statsmodels on fixed inputs, and the edges
(no impressions, no clicks, identical arms) where the textbook formulas divide by zero."""

from __future__ import annotations

import math
from typing import Any

import pytest
from rtrec.serving.experiment_stats import (
    Arm,
    min_sample_size,
    readout,
    readout_for,
    relative_lift,
    srm_p_value,
    two_proportion_z_test,
    verdict,
    wilson_interval,
)
from scipy import stats

from rtrec.config import load_settings

proportion = pytest.importorskip("statsmodels.stats.proportion")
power = pytest.importorskip("statsmodels.stats.power")

CASES = [(30, 200), (0, 50), (50, 50), (1, 1000), (517, 10_000), (3, 7)]


@pytest.mark.parametrize(("successes", "trials"), CASES)
def test_wilson_interval_matches_statsmodels(successes: int, trials: int) -> None:
    low, high = proportion.proportion_confint(successes, trials, alpha=0.05, method="wilson")
    assert wilson_interval(successes, trials) == pytest.approx((low, high), abs=1e-12)


PAIRS = [((200, 30), (210, 45)), ((10_000, 517), (10_000, 580)), ((5000, 40), (1200, 3))]


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_z_test_matches_statsmodels_pooled_z_test(a: tuple, b: tuple) -> None:
    champion, challenger = Arm(*a), Arm(*b)
    z, p = two_proportion_z_test(champion, challenger)
    ref_z, ref_p = proportion.proportions_ztest([b[1], a[1]], [b[0], a[0]])
    assert (z, p) == pytest.approx((ref_z, ref_p), rel=1e-9)


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_lift_interval_is_the_log_ratio_delta_method(a: tuple, b: tuple) -> None:
    lift = relative_lift(Arm(*a), Arm(*b))
    low, high = proportion.confint_proportions_2indep(
        b[1], b[0], a[1], a[0], method="log", compare="ratio", alpha=0.05
    )
    assert lift is not None
    assert lift.estimate == pytest.approx((b[1] / b[0]) / (a[1] / a[0]) - 1, rel=1e-12)
    assert (lift.low, lift.high) == pytest.approx((low - 1, high - 1), rel=1e-9)
    assert lift.low < lift.estimate < lift.high


@pytest.mark.parametrize(
    ("champion", "challenger", "share"),
    [(5000, 5000, 0.5), (5100, 4900, 0.5), (9000, 1000, 0.1), (9200, 800, 0.1), (3, 1, 0.5)],
)
def test_srm_matches_scipy_chi_square(champion: int, challenger: int, share: float) -> None:
    total = champion + challenger
    ref = stats.chisquare([champion, challenger], [total * (1 - share), total * share])
    assert srm_p_value(champion, challenger, share) == pytest.approx(ref.pvalue, rel=1e-9)


@pytest.mark.parametrize(("baseline", "effect", "share"), [(0.1, 0.05, 0.5), (0.03, 0.1, 0.2)])
def test_sample_size_matches_statsmodels_power(baseline: float, effect: float, share) -> None:
    h = proportion.proportion_effectsize(baseline * (1 + effect), baseline)
    ratio = share / (1 - share)
    ref = power.NormalIndPower().solve_power(
        effect_size=h, alpha=0.05, power=0.8, ratio=ratio, alternative="two-sided"
    )
    champion, challenger = min_sample_size(baseline, effect, challenger_share=share)
    # statsmodels also counts the far tail's (negligible) power: at most one trial apart
    assert abs(champion - math.ceil(ref)) <= 1 and champion >= ref * 0.9999
    assert challenger == math.ceil(champion * ratio)
    if share == 0.5:
        assert champion == challenger


def test_no_impressions_say_nothing_and_keep_collecting() -> None:
    empty = Arm(0, 0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert two_proportion_z_test(empty, empty) == (0.0, 1.0)
    assert relative_lift(empty, empty) is None
    assert srm_p_value(0, 0, 0.5) == 1.0
    assert min_sample_size(empty.rate, 0.05) is None
    result = readout(empty, empty, challenger_share=0.5, min_effect=0.05)
    assert result.verdict == "collecting" and result.required is None


def test_no_clicks_in_either_arm_is_collecting_not_a_win() -> None:
    a, b = Arm(100_000, 0), Arm(100_000, 0)
    assert two_proportion_z_test(a, b) == (0.0, 1.0)
    assert relative_lift(a, b) is None
    assert verdict(a, b, challenger_share=0.5, min_effect=0.05) == "collecting"


def test_identical_arms_with_enough_data_show_no_difference() -> None:
    a = b = Arm(200_000, 10_000)
    z, p = two_proportion_z_test(a, b)
    assert z == 0.0 and p == pytest.approx(1.0)
    lift = relative_lift(a, b)
    assert lift is not None and lift.estimate == 0.0 and lift.low < 0 < lift.high
    assert (1 + lift.low) * (1 + lift.high) == pytest.approx(1.0)  # symmetric in log ratio
    result = readout(a, b, challenger_share=0.5, min_effect=0.05)
    assert result.required is not None and result.required[0] < a.trials
    assert result.verdict == "no difference"


def test_verdicts_in_their_order() -> None:
    settings = load_settings()
    settings.serving.ab_challenger_share = 0.5
    champion = Arm(200_000, 10_000)  # 5 %: about 122,000 per arm detect a 5 % lift
    assert readout_for(settings, champion, Arm(200_000, 10_600)).verdict == "challenger wins"
    assert readout_for(settings, champion, Arm(200_000, 9_400)).verdict == "champion wins"
    assert readout_for(settings, champion, Arm(200_000, 10_100)).verdict == "no difference"
    small = readout_for(settings, Arm(2_000, 100), Arm(2_000, 160))
    assert small.p_value < 0.05 and small.verdict == "collecting"  # below the sample size
    skewed = readout_for(settings, champion, Arm(196_000, 10_600))
    assert 1e-12 < skewed.srm_p_value < 0.001 and skewed.verdict == "sample ratio mismatch"
    settings.monitoring.srm_p_threshold = 1e-12  # a stricter flag lets that split through
    assert readout_for(settings, champion, Arm(196_000, 10_600)).verdict == "challenger wins"
    settings.serving.ab_challenger_share = 0.1  # the configured split sizes each arm
    assert readout_for(settings, champion, Arm(200_000, 10_600)).required == (610_536, 67_838)


def test_a_split_that_leaves_an_arm_empty_and_bad_counts() -> None:
    assert srm_p_value(1000, 0, 0.0) == 1.0
    assert srm_p_value(1000, 5, 0.0) == 0.0  # users reached an arm the split never sends to
    assert min_sample_size(0.1, 0.05, challenger_share=0.0) is None
    with pytest.raises(ValueError, match="successes"):
        Arm(10, 11)
    with pytest.raises(ValueError, match="challenger_share"):
        srm_p_value(1, 1, 1.5)


def test_the_mismatch_check_can_compare_users_instead_of_impressions() -> None:
    settings = load_settings()
    settings.serving.ab_challenger_share = 0.5
    champion, challenger = Arm(200_000, 10_000), Arm(260_000, 13_800)  # busier users
    by_trials = readout_for(settings, champion, challenger)
    assert by_trials.verdict == "sample ratio mismatch"
    by_users = readout_for(settings, champion, challenger, srm_sizes=(5_000, 5_020))
    assert by_users.srm_p_value == srm_p_value(5_000, 5_020, 0.5) > 0.5
    assert by_users.verdict == "challenger wins"


def _arm_of(n: Any, x: Any) -> Arm:
    """An arm from per-user impressions ``n`` and clicked impressions ``x``, as the join
    keeps it (totals and the three per-user sums)."""
    return Arm(
        int(n.sum()),
        int(x.sum()),
        users=len(n),
        sum_nn=int((n * n).sum()),
        sum_xx=int((x * x).sum()),
        sum_nx=int((n * x).sum()),
    )


def test_delta_method_variance_is_the_ratio_of_means_variance() -> None:
    """Var(sum x / sum n) by the delta method, computed directly from the per-user arrays
    (Deng et al. 2018, eq. 3), equals what the arm's sums give."""
    import numpy as np

    rng = np.random.default_rng(5)
    n = rng.integers(1, 40, 500)
    x = rng.binomial(n, rng.beta(1, 6, 500))
    arm = _arm_of(n, x)
    r = x.sum() / n.sum()
    cov = np.cov(np.vstack([x, n]))  # sample (N - 1) covariances, as the arm uses
    expected = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (len(n) * n.mean() ** 2)
    assert arm.variance() == pytest.approx(expected, rel=1e-9)
    assert arm.design_effect() > 1.5  # heavy users who click a lot: clustered
    # One impression each: the users are the trials, and the binomial variance is back
    # (up to the sample variance's N / (N - 1)).
    ones = np.ones(800, dtype=int)
    single = _arm_of(ones, rng.binomial(1, 0.2, 800))
    binomial = single.rate * (1 - single.rate) / single.trials
    assert single.variance() == pytest.approx(binomial * 800 / 799, rel=1e-9)


def test_per_user_variance_keeps_aa_tests_at_alpha_where_impressions_do_not() -> None:
    """Two identical arms of users with their own click rates and many impressions each:
    the pooled test over impressions finds a winner far more often than alpha, the
    delta-method test about as often as alpha."""
    import numpy as np

    rng = np.random.default_rng(11)
    wins = {"impressions": 0, "users": 0}
    runs = 400
    for _ in range(runs):
        arms = []
        for _ in range(2):
            n = rng.integers(5, 40, 300)
            x = rng.binomial(n, rng.beta(0.5, 3, 300))  # heterogeneous users
            arms.append(_arm_of(n, x))
        flat = [Arm(a.trials, a.successes) for a in arms]
        wins["impressions"] += two_proportion_z_test(*flat)[1] < 0.05
        wins["users"] += (
            readout(arms[0], arms[1], challenger_share=0.5, min_effect=10.0).p_value < 0.05
        )
    assert wins["impressions"] / runs > 0.2
    assert wins["users"] / runs < 0.08
