"""The serving benchmark's request mix and seeded histories (pure: no stack, no HTTP).

Traffic the service sees in production is not one warm user asking for ten items: most
users have histories of very different lengths (a few long ones dominate the cost, since
``exclude_seen`` over-fetches by the history's length), some are new, some filter by
category, k varies, and item pages ask for similar items. :func:`plan_rate` draws such a
schedule, deterministic given the seed and the rate:

- ``warm`` (80 %): a user with a seeded online history, ``exclude_seen: true``;
- ``cold`` (10 %): half never-seen user ids (the service answers its cold-user fallback),
  half users the model knows but with no online history (the tower on the id alone);
- ``filtered`` (10 %): a warm user with ``include_categories`` (one or two categories,
  drawn by how many items each holds);
- k drawn uniformly from {10, 20, 50};
- ``similar``: ``GET /similar/{item_id}`` at a tenth of the /recommend rate, interleaved.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
from rtrec.serving.loadgen import Request

KINDS = ("warm", "cold", "filtered")
MIX = {"warm": 0.8, "cold": 0.1, "filtered": 0.1}
KS = (10, 20, 50)
SIMILAR_SHARE = 0.1
"""GET /similar requests per /recommend request."""
MAX_HISTORY = 200
"""The online store keeps this many recent items (``features.definitions.RECENT_ITEMS``)."""


@dataclass(frozen=True)
class Population:
    """Who and what the mix draws from."""

    warm_users: list[str]
    """Users with a seeded online history."""
    known_cold_users: list[str]
    """Users in the model's vocabulary without an online history."""
    items: list[str]
    categories: list[str]
    category_weights: list[float]
    """Share of items in each category (a filter picks common categories more often)."""


class Popularity:
    """Zipf-like item popularity over a seeded permutation of the catalog: a few items are
    in many histories, most in few (sampling by a precomputed CDF, cheap for 1M items)."""

    def __init__(self, items: Sequence[str], seed: int, exponent: float = 0.9) -> None:
        rng = np.random.default_rng([seed, 1])
        self.items = list(items)
        self.order = rng.permutation(len(self.items))
        weights = 1.0 / (np.arange(len(self.items)) + 10.0) ** exponent
        self.cdf = np.cumsum(weights) / weights.sum()

    def draw(self, rng: np.random.Generator, n: int) -> list[str]:
        ranks = np.minimum(np.searchsorted(self.cdf, rng.random(n)), len(self.cdf) - 1)
        return [self.items[j] for j in self.order[ranks]]


def history_lengths(rng: np.random.Generator, n: int, *, median: float = 20.0) -> np.ndarray:
    """Skewed lengths in [1, 200]: log-normal around ``median`` (about one user in forty
    at the cap), as activity is in real traffic."""
    raw = rng.lognormal(mean=np.log(median), sigma=1.1, size=n)
    return np.clip(np.rint(raw), 1, MAX_HISTORY).astype(int)


def make_histories(users: Sequence[str], items: Sequence[str], seed: int) -> dict[str, list[str]]:
    """Each user's recent items (newest first, no repeats), deterministic given ``seed``."""
    rng = np.random.default_rng([seed, 2])
    pop = Popularity(items, seed)
    lengths = history_lengths(rng, len(users))
    out = {}
    for user, length in zip(users, lengths, strict=True):
        drawn = pop.draw(rng, int(length))
        out[user] = list(dict.fromkeys(drawn))
    return out


def category_shares(item_categories: Mapping[str, Sequence[str]]) -> tuple[list[str], list[float]]:
    """The categories items carry and each one's share of the catalog's category tags."""
    counts = Counter(c for cats in item_categories.values() for c in cats)
    names = sorted(counts)
    total = sum(counts.values())
    return names, [counts[c] / total for c in names]


def exact_kinds(rng: np.random.Generator, n: int, mix: Mapping[str, float] = MIX) -> list[str]:
    """``n`` kinds in exactly the mix's proportions (largest remainder), shuffled."""
    quotas = {k: n * p for k, p in mix.items()}
    counts = {k: int(q) for k, q in quotas.items()}
    by_remainder = sorted(mix, key=lambda k: quotas[k] - counts[k], reverse=True)
    for k in by_remainder[: n - sum(counts.values())]:
        counts[k] += 1
    kinds = [k for k in mix for _ in range(counts[k])]
    return [kinds[j] for j in rng.permutation(n)]


def recommend_body(
    kind: str, j: int, rng: np.random.Generator, pop: Population, run_tag: str
) -> tuple[str, dict]:
    """One /recommend body of ``kind`` and the user it is for."""
    k = int(KS[int(rng.integers(len(KS)))])
    if kind == "cold":
        if rng.random() < 0.5 or not pop.known_cold_users:
            user = f"new-{run_tag}-{j}"  # never seen: the cold-user fallback
        else:
            user = pop.known_cold_users[int(rng.integers(len(pop.known_cold_users)))]
        return user, {"user_id": user, "k": k, "exclude_seen": True}
    user = pop.warm_users[int(rng.integers(len(pop.warm_users)))]
    body: dict = {"user_id": user, "k": k, "exclude_seen": True}
    if kind == "filtered":
        n_cats = min(len(pop.categories), int(rng.integers(1, 3)))
        picks = rng.choice(len(pop.categories), n_cats, replace=False, p=pop.category_weights)
        body["filters"] = {"include_categories": [pop.categories[c] for c in sorted(picks)]}
    return user, body


@dataclass(frozen=True)
class Planned:
    """A schedule for one rate: the requests in order, each one's mix kind."""

    requests: list[Request]
    kinds: list[str]
    """``warm``, ``cold``, ``filtered`` or ``similar``, per request."""
    total_rate: float
    """Requests/s over both endpoints: the /recommend rate plus the /similar share."""

    def request_for(self, i: int) -> Request:
        return self.requests[i]


def plan_rate(
    pop: Population, *, rate: float, duration_s: float, seed: int, similar_k: int = 10
) -> Planned:
    """The mixed schedule for ``rate`` /recommend requests/s over ``duration_s``.

    A /similar request follows every ``1/SIMILAR_SHARE``-th /recommend one, so both run
    for the whole duration; the load generator offers them at ``total_rate``.
    """
    rng = np.random.default_rng([seed, int(rate * 1000)])
    items = Popularity(pop.items, seed)
    n_rec = max(1, int(rate * duration_s))
    every = round(1 / SIMILAR_SHARE)
    requests: list[Request] = []
    kinds: list[str] = []
    tag = f"s{seed}r{rate:g}"
    for j, kind in enumerate(exact_kinds(rng, n_rec)):
        _, body = recommend_body(kind, j, rng, pop, tag)
        requests.append(Request("POST", "/recommend", json.dumps(body).encode(), "recommend"))
        kinds.append(kind)
        if (j + 1) % every == 0:
            item = items.draw(rng, 1)[0]
            path = f"/similar/{quote(item, safe='')}?k={similar_k}"
            requests.append(Request("GET", path, b"", "similar"))
            kinds.append("similar")
    return Planned(requests, kinds, rate * len(requests) / n_rec)


def bare_plan(planned: Planned) -> list[tuple[str, dict]]:
    """The schedule's /recommend bodies that reach retrieval (warm, filtered, and known
    users without history), for the in-process figure on the same mix; never-seen users
    are answered from the fallback list and do no retrieval, so they are left out."""
    out = []
    for req, kind in zip(planned.requests, planned.kinds, strict=True):
        if kind == "similar":
            continue
        body = json.loads(req.body)
        if kind == "cold" and body["user_id"].startswith("new-"):
            continue
        out.append((kind, body))
    return out
