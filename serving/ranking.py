"""The second stage on the request path: online features -> sources -> ranker -> filters.

A bundle that declares a ranker (``rtrec.training.ranker_declared``) is loaded with it
(:func:`load_stage`, at model load); each request then builds the user's state from its
online features (``rtrec.training.online_state``), searches the two-tower's index for
its candidates, merges them with the item-item, category-trending and popularity
sources, ranks the merged list with the bundle's LightGBM model and filters it
(``rtrec.training.ServedRanker``: numpy and one LightGBM call, no pandas).

If the ranker is unavailable (declared but absent or refused at load, or raising on a
request) the answer is the retrieval order, flagged: ``fallback`` true with the reason,
counted in ``rtrec_serving_fallbacks_total{reason="ranker unavailable"}``, logged at
WARNING (rate-limited) and shown in ``/status``. A single-stage bundle (no ranker
declared) is answered as before, unflagged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rtrec.serving import metrics

logger = logging.getLogger(__name__)

UNAVAILABLE = "ranker unavailable"
"""The fallback reason's label (and the metric's) when the ranker cannot rank."""
TREES_NOT_COMPILED = "ranker trees not compiled"
"""``rtrec_serving_degradations_total``'s reason for a loaded ranker whose trees run on a
slower engine than the compiled one (``rtrec.training.served_trees``)."""


@dataclass(frozen=True)
class RankerStage:
    """What a loaded bundle has of a second stage: the ranker (None: none usable), the
    version its bundle declares, and why a declared one is unusable."""

    ranker: Any | None
    version: str | None = None
    error: str | None = None

    @property
    def status(self) -> dict[str, Any]:
        """``/status``'s view: ``loaded``, ``unavailable`` (with the reason) or ``none``."""
        state = "loaded" if self.ranker is not None else "unavailable" if self.error else "none"
        trees = getattr(self.ranker, "trees_engine", None)
        return {"state": state, "version": self.version, "error": self.error, "trees": trees}


NO_RANKER = RankerStage(None)


def load_stage(bundle: Any) -> RankerStage:
    """The bundle's ranker, loaded and tried once on a made-up user; a declared ranker
    that fails either way is unavailable (logged at WARNING), never a refused bundle:
    its retrieval stage still serves. Trees on a slower engine than the compiled one are
    counted (:data:`TREES_NOT_COMPILED`) and named in ``/status``."""
    from rtrec.training import TREES_COMPILED, load_ranker, ranker_declared

    declared = ranker_declared(bundle.metadata)
    if declared is None:
        return NO_RANKER
    version = str(declared.get("version"))
    try:
        ranker = load_ranker(bundle)
        _warm(bundle, ranker)
    except Exception as exc:  # any failure leaves retrieval order, flagged per request
        error = f"{type(exc).__name__}: {exc}"[:300]
        logger.warning("ranker %s unavailable, serving retrieval order: %s", version, error)
        return RankerStage(None, version, error)
    if ranker.trees_engine not in (None, TREES_COMPILED):  # served_trees said why, at WARNING
        metrics.DEGRADATIONS.labels(TREES_NOT_COMPILED).inc()
    return RankerStage(ranker, version)


def _warm(bundle: Any, ranker: Any) -> None:
    """One ranking of a made-up user (first calls allocate; a broken stage shows now)."""
    items = list(bundle.item_ids[:3])
    feats = {"recent_items": items, "last_event_ms": int(time.time() * 1000)}
    dense = np.zeros((1, len(bundle.dense_names)), np.float32)
    vec = bundle.user_vectors(["warmup"], [items], dense)
    rank_candidates(bundle, ranker, "warmup", feats, vec, int(time.time() * 1000))


def rank_candidates(
    bundle: Any, ranker: Any, user_id: str, feats: dict[str, Any], vec: np.ndarray, now_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    """(catalog rows best first, their scores) for one user with online features ``feats``
    and retrieval query ``vec`` (``[1, dim + 1]``). Rows, not ids: the filters keep about
    ``k`` of the 200, and only those are looked up (each lookup into a 1M-item catalog's
    id list is a cache miss: all 200 took 0.15 ms of a 1.7 ms request)."""
    from rtrec.training import online_state

    state = online_state(user_id, feats, ranker.sources.p.history_limit)
    hist = bundle.encoders.items.encode(state.items) - 1
    t = time.perf_counter()
    query, search = ranker.search(bundle, hist, vec)
    if search is not None:  # a user without history gets popularity only: no search
        metrics.observe_stage("search", time.perf_counter() - t)
    t = time.perf_counter()
    ranked = ranker.rank(state, hist, query, search, now_ms)
    metrics.observe_stage("rank", time.perf_counter() - t)
    return ranked.pos, ranked.scores


def items_for(
    engine: Any, loaded: Any, req: Any, feats: dict[str, Any], history: list[str], k: int
) -> tuple[list[tuple[str, float]], str | None]:
    """(the answer's items, None) ranked by the bundle's ranker, or retrieval order for a
    single-stage bundle; (retrieval order, why) when a declared ranker cannot rank."""
    stage: RankerStage = loaded.ranker
    if stage.ranker is None and stage.error is None:
        return engine._retrieve(loaded, req, feats, history, k), None
    why = stage.error
    if stage.ranker is not None:
        try:
            return _ranked(engine, loaded, stage.ranker, req, feats, history, k), None
        except Exception as exc:  # a ranker that raises: retrieval order, flagged
            why = f"{type(exc).__name__}: {exc}"[:300]
    return engine._retrieve(loaded, req, feats, history, k), why


def _ranked(
    engine: Any,
    loaded: Any,
    ranker: Any,
    req: Any,
    feats: dict[str, Any],
    history: list[str],
    k: int,
) -> list[tuple[str, float]]:
    """The ranked candidates through the request's filters; when the filters leave fewer
    than ``k``, retrieval order fills the rest (the engine then tops up from the fallback
    list if even that is short)."""
    from rtrec.serving.filters import RowFilter
    from rtrec.serving.retrieval import dense_row

    bundle = loaded.bundle
    t = time.perf_counter()
    now_ms = int(time.time() * 1000)
    dense = dense_row(feats, bundle.dense_names, now_ms)
    vec = bundle.user_vectors([req.user_id], [history], dense)
    metrics.observe_stage("user_tower", time.perf_counter() - t)
    rows, scores = rank_candidates(bundle, ranker, req.user_id, feats, vec, now_ms)
    keep = RowFilter(bundle, req, history).first(rows, k)
    picked = list(zip(bundle.ids_of(rows[keep]), scores[keep].tolist(), strict=True))
    if len(picked) < k:
        taken = {i for i, _ in picked}
        more = engine._retrieve(loaded, req, feats, history, k + len(picked), vec)
        picked += [(i, s) for i, s in more if i not in taken][: k - len(picked)]
    return picked
