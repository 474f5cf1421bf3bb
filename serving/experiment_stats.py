"""The statistics of an online experiment's readout: champion against challenger.

Each arm is a count of trials (impressions) and successes (impressions followed by a
click); the functions are pure and take counts, so a readout can be recomputed from any
attribution of feedback to impressions. The choices, each the standard one for a
conversion-rate A/B test:

- **the unit is the user**: the split assigns users, and one user's impressions are not
  independent trials (a user who likes the catalog clicks on many of them), so treating
  impressions as trials understates the variance: in A/A tests of the simulated users
  (``bench/experiment.py``) a quarter of the tests found a winner at alpha 0.05. Where
  the arm carries per-user sums (:class:`Arm` ``users``, ``sum_nn``, ``sum_xx``,
  ``sum_nx``), the click-through per impression is treated as the ratio of two per-user
  means and its variance is the **delta method**'s (Deng, Knoblich and Lu, "Applying the
  Delta Method in Metric Analytics", KDD 2018); without them, the binomial one;
- a rate's 95 % interval: **Wilson** score interval without per-user sums (sensible at
  0 and n successes); with them, the normal interval of the delta-method variance;
- challenger against champion: a **two-sided z-test**: on the delta-method variances of
  both arms (unpooled) where both carry per-user sums, else the pooled two-proportion
  z-test;
- the relative lift ``p_challenger / p_champion - 1`` and its interval: the **delta method
  on the log of the ratio** (``var = var_b / p_b^2 + var_a / p_a^2``, each arm's rate
  variance as above), exponentiated back, so the interval is asymmetric as a ratio's
  should be; no resampling, hence no seed;
- **sample ratio mismatch**: a chi-square goodness-of-fit test of the arms' sizes against
  the configured split (``serving.ab_challenger_share``); flagged below
  ``monitoring.srm_p_threshold`` (0.001 by default, the usual threshold: at thousands of
  users a real split misses it by chance once in a thousand readouts);
- the **minimum sample size** per arm to detect a relative lift of
  ``monitoring.min_detectable_effect`` over the champion's rate at alpha 0.05 and power
  0.8, two-sided, on Cohen's arcsine effect size ``h`` (what statsmodels' ``NormalIndPower``
  solves), for the configured split rather than only an even one, times the champion
  arm's **design effect** (its delta-method variance over the binomial one, at least 1)
  where it carries per-user sums: clustered impressions carry less information each.

The verdict is a fixed-horizon test: it is meant to be read once both arms reach their
sample size, and reading it again and again before then would find differences that are
not there, which is why below that size it says ``collecting`` whatever the p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from rtrec.config import Settings

ALPHA = 0.05
POWER = 0.8
SRM_P_THRESHOLD = 0.001
"""Defaults of ``monitoring.srm_p_threshold`` and of the test's error rates."""

Verdict = Literal[
    "collecting", "challenger wins", "champion wins", "no difference", "sample ratio mismatch"
]
_NORMAL = NormalDist()


def _z(two_sided_alpha: float) -> float:
    return _NORMAL.inv_cdf(1 - two_sided_alpha / 2)


@dataclass(frozen=True)
class Arm:
    """One arm's counts: trials (impressions) and successes (clicked impressions), and
    optionally the per-user sums of the delta method: ``users`` (exposed), and over them
    the sums of impressions squared, clicked impressions squared and their product."""

    trials: int
    successes: int
    users: int = 0
    sum_nn: int = 0
    sum_xx: int = 0
    sum_nx: int = 0

    def __post_init__(self) -> None:
        if self.trials < 0 or not 0 <= self.successes <= self.trials:
            raise ValueError(f"need 0 <= successes <= trials, got {self}")

    @property
    def rate(self) -> float:
        """Successes per trial; 0 without trials (no evidence either way)."""
        return self.successes / self.trials if self.trials else 0.0

    @property
    def per_user(self) -> bool:
        """Whether the per-user sums are there (two users at least: a variance needs them)."""
        return self.users >= 2 and self.sum_nn > 0

    def variance(self) -> float:
        """Variance of :attr:`rate`: the delta method over users where the per-user sums
        are there, else the binomial ``p (1 - p) / n``; 0 without trials."""
        if not self.trials:
            return 0.0
        p = self.rate
        if not self.per_user:
            return p * (1 - p) / self.trials
        users = self.users
        mean_n, mean_x = self.trials / users, self.successes / users
        var_n = (self.sum_nn - users * mean_n * mean_n) / (users - 1)
        var_x = (self.sum_xx - users * mean_x * mean_x) / (users - 1)
        cov = (self.sum_nx - users * mean_n * mean_x) / (users - 1)
        return max((var_x - 2 * p * cov + p * p * var_n) / (users * mean_n * mean_n), 0.0)

    def design_effect(self) -> float:
        """Delta-method variance over the binomial one (1 without per-user sums)."""
        p = self.rate
        binomial = p * (1 - p) / self.trials if self.trials else 0.0
        if not self.per_user or binomial <= 0:
            return 1.0
        return self.variance() / binomial


def rate_interval(arm: Arm, *, alpha: float = ALPHA) -> tuple[float, float]:
    """The 95 % interval of an arm's rate: normal on the delta-method variance where it
    has per-user sums, else Wilson's."""
    if not arm.per_user:
        return wilson_interval(arm.successes, arm.trials, alpha=alpha)
    half = _z(alpha) * math.sqrt(arm.variance())
    return max(0.0, arm.rate - half), min(1.0, arm.rate + half)


def z_test(champion: Arm, challenger: Arm) -> tuple[float, float]:
    """(z, two-sided p) of challenger against champion: unpooled on the arms' delta-method
    variances where both have per-user sums, else :func:`two_proportion_z_test`."""
    if not (champion.per_user and challenger.per_user):
        return two_proportion_z_test(champion, challenger)
    variance = champion.variance() + challenger.variance()
    if variance <= 0:
        return 0.0, 1.0
    z = (challenger.rate - champion.rate) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


def wilson_interval(successes: int, trials: int, *, alpha: float = ALPHA) -> tuple[float, float]:
    """The Wilson score interval of a proportion; (0, 1) without trials."""
    if trials == 0:
        return 0.0, 1.0
    z, p = _z(alpha), successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z_test(champion: Arm, challenger: Arm) -> tuple[float, float]:
    """(z, two-sided p-value) of the pooled z-test, positive z when the challenger's rate
    is higher. With no variance to test (an arm without trials, or both arms all
    failures or all successes) the arms are not distinguishable: (0, 1)."""
    n_a, n_b = champion.trials, challenger.trials
    if n_a == 0 or n_b == 0:
        return 0.0, 1.0
    pooled = (champion.successes + challenger.successes) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0:
        return 0.0, 1.0
    z = (challenger.rate - champion.rate) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


@dataclass(frozen=True)
class Lift:
    """Relative lift of the challenger's rate over the champion's, with its interval."""

    estimate: float
    low: float
    high: float


def relative_lift(champion: Arm, challenger: Arm, *, alpha: float = ALPHA) -> Lift | None:
    """``rate_challenger / rate_champion - 1`` with the delta-method interval on the log
    ratio; None while either arm has no success (the log ratio is then undefined)."""
    a, b = champion, challenger
    if a.successes == 0 or b.successes == 0:
        return None
    log_ratio = math.log(b.rate / a.rate)
    if a.per_user and b.per_user:
        se = math.sqrt(b.variance() / b.rate**2 + a.variance() / a.rate**2)
    else:
        se = math.sqrt(1 / b.successes - 1 / b.trials + 1 / a.successes - 1 / a.trials)
    half = _z(alpha) * se
    return Lift(
        estimate=math.exp(log_ratio) - 1,
        low=math.exp(log_ratio - half) - 1,
        high=math.exp(log_ratio + half) - 1,
    )


def srm_p_value(champion_trials: int, challenger_trials: int, challenger_share: float) -> float:
    """Chi-square goodness-of-fit p-value (1 degree of freedom) of the arms' sizes against
    the configured share. Without trials there is no evidence of a mismatch: 1. An arm
    the split gives no share to must stay empty: 1 if it is, 0 if it is not."""
    total = champion_trials + challenger_trials
    if not 0.0 <= challenger_share <= 1.0:
        raise ValueError(f"challenger_share must be in [0, 1], got {challenger_share}")
    if total == 0:
        return 1.0
    expected = (total * (1 - challenger_share), total * challenger_share)
    observed = (champion_trials, challenger_trials)
    if 0.0 in expected:
        empty = [o for o, e in zip(observed, expected, strict=True) if e == 0.0]
        return 1.0 if not any(empty) else 0.0
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    return math.erfc(math.sqrt(chi2 / 2))  # the chi-square(1) survival function


def min_sample_size(
    baseline_rate: float,
    min_effect: float,
    *,
    challenger_share: float = 0.5,
    alpha: float = ALPHA,
    power: float = POWER,
) -> tuple[int, int] | None:
    """Trials needed per arm, (champion, challenger), to detect a relative lift of
    ``min_effect`` over ``baseline_rate`` (two-sided, arcsine effect size) with arms
    split as configured. None when it cannot be sized: a baseline of 0 or 1 (no clicks
    seen yet, or nothing left to gain) or a split that leaves an arm empty."""
    if not 0.0 < baseline_rate < 1.0 or not 0.0 < challenger_share < 1.0:
        return None
    if min_effect <= 0:
        raise ValueError(f"min_effect must be positive, got {min_effect}")
    target = min(baseline_rate * (1 + min_effect), 1.0)
    h = 2 * math.asin(math.sqrt(target)) - 2 * math.asin(math.sqrt(baseline_rate))
    ratio = challenger_share / (1 - challenger_share)  # challenger trials per champion trial
    per_unit = ((_z(alpha) + _NORMAL.inv_cdf(power)) / h) ** 2
    champion = math.ceil(per_unit * (1 + 1 / ratio))
    return champion, math.ceil(champion * ratio)


@dataclass(frozen=True)
class Readout:
    """Everything the verdict rests on, for a report."""

    champion: Arm
    challenger: Arm
    champion_interval: tuple[float, float]
    challenger_interval: tuple[float, float]
    z: float
    p_value: float
    lift: Lift | None
    srm_p_value: float
    required: tuple[int, int] | None
    """Trials needed per arm (champion, challenger); None until the champion has a rate."""
    verdict: Verdict


def readout(
    champion: Arm,
    challenger: Arm,
    *,
    challenger_share: float,
    min_effect: float,
    srm_p_threshold: float = SRM_P_THRESHOLD,
    alpha: float = ALPHA,
    power: float = POWER,
    srm_sizes: tuple[int, int] | None = None,
) -> Readout:
    """The statistics and the verdict, checked in this order: a sample ratio mismatch
    (the split is broken, nothing else can be trusted), ``collecting`` while either arm
    is below its sample size (sized on the champion's rate, or both arms' while the
    champion has no click), then the z-test at ``alpha``: the better arm wins, or
    ``no difference``. ``srm_sizes``: the arms' sizes the mismatch check compares, when
    they are not the trials: the split assigns users, so a readout over impressions
    checks the exposed users per arm (a heavy user would otherwise look like a
    mismatch)."""
    z, p = z_test(champion, challenger)
    sizes = srm_sizes or (champion.trials, challenger.trials)
    srm = srm_p_value(sizes[0], sizes[1], challenger_share)
    baseline = champion.rate or _pooled_rate(champion, challenger)
    required = _inflated(
        min_sample_size(
            baseline, min_effect, challenger_share=challenger_share, alpha=alpha, power=power
        ),
        max(champion.design_effect(), 1.0),
    )
    verdict: Verdict
    if srm < srm_p_threshold:
        verdict = "sample ratio mismatch"
    elif required is None or champion.trials < required[0] or challenger.trials < required[1]:
        verdict = "collecting"
    elif p < alpha:
        verdict = "challenger wins" if z > 0 else "champion wins"
    else:
        verdict = "no difference"
    return Readout(
        champion=champion,
        challenger=challenger,
        champion_interval=rate_interval(champion, alpha=alpha),
        challenger_interval=rate_interval(challenger, alpha=alpha),
        z=z,
        p_value=p,
        lift=relative_lift(champion, challenger, alpha=alpha),
        srm_p_value=srm,
        required=required,
        verdict=verdict,
    )


def _inflated(required: tuple[int, int] | None, design_effect: float) -> tuple[int, int] | None:
    if required is None:
        return None
    return math.ceil(required[0] * design_effect), math.ceil(required[1] * design_effect)


def _pooled_rate(a: Arm, b: Arm) -> float:
    trials = a.trials + b.trials
    return (a.successes + b.successes) / trials if trials else 0.0


def verdict(
    champion: Arm,
    challenger: Arm,
    *,
    challenger_share: float,
    min_effect: float,
    srm_p_threshold: float = SRM_P_THRESHOLD,
) -> Verdict:
    """:func:`readout`'s verdict alone, at alpha 0.05 and power 0.8."""
    return readout(
        champion,
        challenger,
        challenger_share=challenger_share,
        min_effect=min_effect,
        srm_p_threshold=srm_p_threshold,
    ).verdict


def readout_for(
    settings: Settings,
    champion: Arm,
    challenger: Arm,
    *,
    srm_sizes: tuple[int, int] | None = None,
) -> Readout:
    """:func:`readout` with the configured split, minimum detectable effect and SRM
    threshold (``serving.ab_challenger_share``, ``monitoring.*``)."""
    return readout(
        champion,
        challenger,
        srm_sizes=srm_sizes,
        challenger_share=settings.serving.ab_challenger_share,
        min_effect=settings.monitoring.min_detectable_effect,
        srm_p_threshold=settings.monitoring.srm_p_threshold,
    )
