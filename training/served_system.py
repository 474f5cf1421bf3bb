"""A registered bundle judged as serving answers with it, for the promotion gate.

Serving answers with a bundle's two stages when it declares a ranker that loads
(``rtrec.serving`` through ``rtrec.training.ServedRanker``), else with the two-tower's
retrieval order (flagged there when a declared ranker cannot rank). The gate compares what
users would get, so the champion is scored the same way: :func:`served_system` gives its
scorer and says which system that is, and why when it is retrieval order.

:class:`ServedTwoStage` runs the request path offline over the evaluator's interface: each
user's state from the events seen (its latest ``history_limit`` items, as the online store
keeps them), the two-tower's query and index search, the frozen sources, features and
trees of the bundle; every catalog item gets a score, the ranked candidates above all
others (those in popularity order), as ``TwoStage`` scores the challenger.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from rtrec.training.candidates import user_states
from rtrec.training.ranker_bundle import load_ranker, ranker_declared
from rtrec.training.results import RETRIEVAL, TWO_STAGE

logger = logging.getLogger(__name__)


class ServedTwoStage:
    """A bundle's candidates then its ranker, per user, as a request runs them."""

    name = TWO_STAGE

    def __init__(self, bundle: Any, ranker: Any) -> None:
        self.bundle = bundle
        self.ranker = ranker
        pop = np.asarray(ranker.tables.item_features[:, 0], dtype=np.float64)  # pop_all
        self._floor = (np.nan_to_num(pop) - 1e3).astype(np.float32)

    @property
    def item_ids(self) -> list[str]:
        return self.bundle.item_ids

    def score(self, seen: pd.DataFrame, user_ids: list[str]) -> np.ndarray:
        """Scores ``[users, items]``: each user's ranked candidates first, in the ranker's
        order; ``seen``'s latest event is the moment of every request."""
        now = int(seen["ts"].max()) + 1 if len(seen) else 0
        limit = self.ranker.sources.p.history_limit
        states = user_states(seen, user_ids, limit=limit)
        queries = self.bundle.queries(seen, user_ids)
        out = np.broadcast_to(self._floor, (len(user_ids), len(self._floor))).copy()
        encode = self.bundle.encoders.items.encode
        for r, state in enumerate(states):
            hist = encode(state.items.astype(str)) - 1
            query, search = self.ranker.search(self.bundle, hist, queries[r : r + 1])
            ranked = self.ranker.rank(state, hist, query, search, now)
            out[r, ranked.pos] = 1e6 - np.arange(len(ranked.pos), dtype=np.float32)
        return out


def served_system(bundle: Any, version: str | None = None) -> tuple[Any, str, str | None]:
    """(scorer, system, flag) of a loaded bundle as serving would answer with it:
    its two stages when it declares a ranker that loads; else its retrieval order, with
    the flag saying why (no ranker declared, or the declared one cannot be loaded)."""
    declared = ranker_declared(bundle.metadata)
    if declared is None:
        return bundle, RETRIEVAL, "it declares no ranker: judged by its retrieval order"
    try:
        ranker = load_ranker(bundle)
    except Exception as exc:  # serving would fall back to retrieval order, flagged
        why = f"{type(exc).__name__}: {exc}"[:300]
        flag = f"its ranker cannot be loaded ({why}): judged by its retrieval order"
        logger.warning("gate: champion v%s: %s", version or bundle.version, flag)
        return bundle, RETRIEVAL, flag
    return ServedTwoStage(bundle, ranker), TWO_STAGE, None
