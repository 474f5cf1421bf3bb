"""The index the bundle carries: built on the served model's item keys, tuned on the
validation users' queries and measured on the gate users' (queries that did not tune it).
Below ``settings.training.min_index_recall`` the run fails before anything is registered.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from rtrec.training.index import RECALL_KS, ItemIndex, build_index, measure_recall
from rtrec.training.model import cold_users
from rtrec.training.sets import Frames

from rtrec.config import Settings
from rtrec.errors import RtrecError

MAX_RECALL_QUERIES = 1000


def build_served_index(settings: Settings, model: Any, frames: Frames) -> ItemIndex:
    """The served index, tuned and measured (see the module docstring)."""
    keys = model.item_keys()
    tuning = warm_queries(model, frames.train, frames.validation, seed=settings.seed)
    index = build_index(
        keys,
        exact_max=settings.training.index_exact_max_items,
        target_recall=settings.training.min_index_recall,
        k=max(RECALL_KS),
        queries=tuning if len(tuning) else None,
        seed=settings.seed,
    )
    queries = warm_queries(model, frames.fit_part, frames.gate, seed=settings.seed)
    source = "gate"
    if not len(queries):  # no warm user in the gate slice: validation's, said so
        queries, source = tuning, "validation"
    measured = measure_recall(
        index, keys, queries, source=f"{len(queries)} {source}-slice users' query vectors"
    )
    floor = settings.training.min_index_recall
    got = measured.get(f"recall@{max(RECALL_KS)}", float("nan"))
    if not got >= floor:  # NaN (no queries at all) fails too
        raise RtrecError(
            f"the {index.kind} index reaches recall@{max(RECALL_KS)} {got:.4f} against exact "
            f"search ({measured['source']}), below settings.training.min_index_recall "
            f"{floor}; not registering it"
        )
    return index


def warm_queries(model: Any, seen: pd.DataFrame, target: pd.DataFrame, *, seed: int) -> Any:
    """Retrieval queries of ``target``'s warm users as of ``seen`` (cold users are served
    by the fallback, never by the index); at most ``MAX_RECALL_QUERIES``, sampled."""
    users = sorted(target["user_id"].astype(str).unique())
    if len(users) > MAX_RECALL_QUERIES:
        rng = np.random.default_rng(seed)
        users = sorted(rng.choice(users, size=MAX_RECALL_QUERIES, replace=False))
    user, history, dense = model.encoders.user_state(seen, users)
    warm = ~cold_users(user, history)
    return model.user_vectors(user[warm], history[warm], dense[warm])
