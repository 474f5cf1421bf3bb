"""The A/B readout: the stream processor's experiment aggregates, judged.

:func:`experiment_status` reads what the processor's join keeps in Redis
(``rtrec.streaming.experiment_join``) and returns, per experiment (newest first) and
variant, the exposure, the outcome rates with 95 % Wilson intervals, the mean reciprocal
rank of clicked items, and the comparison (:mod:`rtrec.serving.experiment_stats`): the
challenger's relative lift in **click-through per impression** (impressions with at
least one attributed click / impressions) with its interval and the p-value of the
pooled two-proportion z-test, the sample-ratio-mismatch check of the **exposed users** per
arm (the unit the split assigns) against ``serving.ab_challenger_share``, and the verdict.

It lives in serving, below monitoring, so that the service's ``GET /experiments`` can
answer it (the layers import downwards only); ``rtrec.monitoring`` re-exports it for the
CLI and the DAGs.
"""

from __future__ import annotations

from typing import Any

from rtrec.serving.experiment_stats import Arm, rate_interval, readout_for, wilson_interval
from rtrec.serving.experiments import CHALLENGER, CHAMPION
from rtrec.streaming import NO_EXPERIMENT, arm_keys, arm_row, experiment_keys

from rtrec.config import Settings

TEST = (
    "two-sided z-test on click-through per impression with per-user delta-method "
    "variances (the user is the unit the split assigns; arms without per-user sums: the "
    "pooled two-proportion z-test); relative lift with a delta-method interval on the log "
    "ratio; sample size sized for monitoring.min_detectable_effect times the champion's "
    "design effect; sample ratio mismatch: chi-square of exposed users per arm against "
    "serving.ab_challenger_share"
)


def experiment_status(settings: Settings, client: Any = None) -> dict[str, Any]:
    """The readout of every experiment the processor has seen (see the module docstring).

    ``client``: a Redis client (default: one on ``redis.url``). Raises Redis's errors
    when it cannot be read: a readout of nothing is not a readout of no data."""
    import orjson

    if client is None:
        from rtrec.redis_clients import redis_client

        client = redis_client(settings)
    keys = experiment_keys(settings)
    members = client.zrevrange(keys["arms"], 0, -1)
    # One MULTI/EXEC (every key shares the group's hash tag, so one slot on a cluster): the
    # processor's commit script can then not land between two arms' reads, which would
    # skew their user counts by a batch and could read as a sample ratio mismatch.
    pipe = client.pipeline(transaction=True)
    arms = [tuple(orjson.loads(m)) for m in members]
    for experiment, variant in arms:
        counters, users, clickers = arm_keys(keys["prefix"], experiment, variant)
        pipe.hgetall(counters)
        pipe.scard(users)
        pipe.scard(clickers)
    pipe.hgetall(keys["unattributed"])
    res = pipe.execute()
    by_experiment: dict[str, dict[str, dict[str, Any]]] = {}
    for n, (experiment, variant) in enumerate(arms):
        row = arm_row(res[3 * n], res[3 * n + 1], res[3 * n + 2])
        by_experiment.setdefault(experiment, {})[variant] = row
    unattributed = arm_row(res[-1], 0, 0)
    unattributed.pop("users"), unattributed.pop("clicking_users")
    outside = by_experiment.pop(NO_EXPERIMENT, {})
    return {
        "test": TEST,
        "challenger_share": settings.serving.ab_challenger_share,
        "attribution_window_s": settings.monitoring.attribution_window_s,
        "experiments": [_judged(settings, e, arms) for e, arms in by_experiment.items()],
        "outside_experiments": {v: _summary(row) for v, row in outside.items()},
        "unattributed": unattributed,
    }


def _rate(successes: int, trials: int) -> dict[str, float | None]:
    """A rate with its 95 % Wilson interval; no interval where the count can exceed the
    trials (several add-to-carts per answer), which no binomial interval covers."""
    rate = successes / trials if trials else None
    if successes > trials:
        return {"rate": rate, "low": None, "high": None}
    low, high = wilson_interval(successes, trials)
    return {"rate": rate, "low": low, "high": high}


def _arm(row: dict[str, Any]) -> Arm:
    """An arm of the statistics, with its per-user sums where the join wrote them."""
    return Arm(
        row.get("impressions", 0),
        row.get("clicked_impressions", 0),
        users=row.get("users", 0),
        sum_nn=row.get("sum_nn", 0),
        sum_xx=row.get("sum_xx", 0),
        sum_nx=row.get("sum_nx", 0),
    )


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    impressions, users = row.get("impressions", 0), row.get("users", 0)
    clicks = row.get("click", 0)
    arm = _arm(row)
    low, high = rate_interval(arm)
    return {
        "impressions": impressions,
        "users": users,
        "clicks": clicks,
        "add_to_carts": row.get("add_to_cart", 0),
        "purchases": row.get("purchase", 0),
        "clicked_impressions": row.get("clicked_impressions", 0),
        "clicking_users": row.get("clicking_users", 0),
        "ctr_per_impression": {"rate": arm.rate if impressions else None, "low": low, "high": high},
        "design_effect": round(arm.design_effect(), 3),
        "ctr_per_user": _rate(row.get("clicking_users", 0), users),
        "add_to_cart_rate": _rate(row.get("add_to_cart", 0), impressions),
        "purchase_rate": _rate(row.get("purchase", 0), impressions),
        "mrr": row.get("rr_sum", 0.0) / clicks if clicks else None,
        "first_ms": row.get("first_ms"),
        "last_ms": row.get("last_ms"),
    }


def _judged(settings: Settings, experiment: str, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One experiment's variants and the comparison of challenger against champion."""
    empty: dict[str, Any] = {}
    a, b = rows.get(CHAMPION, empty), rows.get(CHALLENGER, empty)
    champion, challenger = _arm(a), _arm(b)
    out = readout_for(
        settings, champion, challenger, srm_sizes=(a.get("users", 0), b.get("users", 0))
    )
    lift = out.lift
    return {
        "experiment": experiment,
        "variants": {v: _summary(rows[v]) for v in sorted(rows, key=lambda v: (v != CHAMPION, v))},
        "lift": None
        if lift is None
        else {"estimate": lift.estimate, "low": lift.low, "high": lift.high},
        # Arms written before the join kept per-user sums are judged on the binomial
        # variance: say which, so a readout never passes one off as the other.
        "variance": "per user" if champion.per_user and challenger.per_user else "binomial",
        "z": out.z,
        "p_value": out.p_value,
        "srm_p_value": out.srm_p_value,
        "srm": out.srm_p_value < settings.monitoring.srm_p_threshold,
        "required_impressions": None
        if out.required is None
        else {CHAMPION: out.required[0], CHALLENGER: out.required[1]},
        "verdict": out.verdict,
    }
