"""The recommendation path: online features -> user tower -> FAISS -> filters -> top k.

``Engine`` holds the loaded models by variant; a swap replaces one dict reference, so a
request keeps the model it started with and never sees a half-swapped pair.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from rtrec.serving import metrics
from rtrec.serving.degradation import Degradations
from rtrec.serving.experiments import CHALLENGER, CHAMPION, experiment_id, variant_for
from rtrec.serving.fallback import PopularCache
from rtrec.serving.filters import RowFilter, banned_ids, passing
from rtrec.serving.lifecycle import Loaded
from rtrec.serving.online import GuardedFeatures
from rtrec.serving.ranking import UNAVAILABLE, items_for
from rtrec.serving.schemas import RecommendRequest
from rtrec.training import dense_transform

from rtrec.config import Settings
from rtrec.errors import Unavailable
from rtrec.logging import redact_id

if TYPE_CHECKING:
    from rtrec.serving.impressions import ImpressionLog

logger = logging.getLogger(__name__)


def dense_row(features: dict[str, Any], names: list[str], now_ms: int) -> np.ndarray:
    """Online features -> the user tower's dense input, through training's own transform.

    The online store holds counts and ``last_event_ms``; training's ``secs_since_prev``
    is the time since the user's previous event, here the time since the last one. A
    missing value (unknown user, a feature never written) is NaN, which the transform
    treats as training treats a null.
    """
    raw = np.empty((1, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        if name == "secs_since_prev":
            last = features.get("last_event_ms")
            raw[0, j] = (now_ms - last) / 1000 if last else math.nan
        else:
            value = features.get(name)
            raw[0, j] = math.nan if value is None else float(value)
    return dense_transform(raw, names)


class Engine:
    def __init__(
        self,
        settings: Settings,
        *,
        features: Callable[[list[str]], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.settings = settings
        self.models: dict[str, Loaded] = {}
        self.degradations = Degradations()
        self.popular = PopularCache(settings, degradations=self.degradations)
        self.online = GuardedFeatures(settings, features)
        self._features = self.online
        self.impressions: ImpressionLog | None = None
        """Where every answer is logged (the service sets it with ``serving.impressions``)."""

    def swap(self, variant: str, loaded: Loaded | None) -> None:
        """Serve ``loaded`` for ``variant`` from the next request on (None: stop serving it).

        One reference assignment: a request in flight keeps the dict it started with.
        """
        if loaded is None:
            self.models = {k: v for k, v in self.models.items() if k != variant}
            metrics.MODEL_VERSION.labels(variant).set(-1)
            return
        self.models = {**self.models, variant: loaded}
        if variant == CHAMPION:
            self.popular.popular = loaded.bundle.popular_items
        metrics.MODEL_VERSION.labels(variant).set(_as_number(loaded.version))

    @property
    def ready(self) -> bool:
        return CHAMPION in self.models

    async def recommend_async(self, req: RecommendRequest) -> dict[str, Any]:
        """:meth:`recommend_or_fallback` for the event loop: the online-feature read is
        awaited (the loop serves other requests meanwhile); the rest is CPU work of about
        a millisecond, done in place, since handing it to a thread costs more than it."""
        start = time.perf_counter()
        if not self.models:  # answered before any read: "no model loaded yet"
            return self.recommend_or_fallback(req, start=start)
        feats: dict[str, Any] | Unavailable
        try:
            feats = (await self.online.read([req.user_id]))[0]
        except Unavailable as exc:
            feats = exc
        except Exception as exc:  # a bug in the read path: the flagged fallback, logged
            return self._internal_error(req, exc, start)
        metrics.observe_stage("features", time.perf_counter() - start)
        return self.recommend_or_fallback(req, features=feats, start=start)

    def recommend_or_fallback(
        self,
        req: RecommendRequest,
        *,
        features: dict[str, Any] | Unavailable | None = None,
        start: float | None = None,
    ) -> dict[str, Any]:
        """:meth:`recommend`, and on any unexpected error the flagged fallback: never a 500."""
        start = time.perf_counter() if start is None else start
        try:
            return self.recommend(req, features=features, start=start)
        except Exception as exc:  # last line of defence: degrade, log the reason, stay up
            return self._internal_error(req, exc, start)

    def _internal_error(
        self, req: RecommendRequest, exc: Exception, start: float
    ) -> dict[str, Any]:
        logger.error("recommend failed; serving the fallback\n%s", _scrubbed_traceback(req.user_id))
        models = self.models
        out = {
            "user_id_hash": redact_id(req.user_id),
            "variant": CHAMPION,
            "experiment": experiment_id(models, self.settings.serving.ab_challenger_share),
        }
        k = min(req.k, self.settings.serving.max_k)
        reason = f"internal error: {type(exc).__name__}"
        return self._fallback(out, k, req, reason, start, models.get(CHAMPION))

    def recommend(
        self,
        req: RecommendRequest,
        *,
        features: dict[str, Any] | Unavailable | None = None,
        start: float | None = None,
    ) -> dict[str, Any]:
        """Top-k for ``req``. ``features`` is the user's online-feature row when the
        caller read it already (:meth:`recommend_async`; an :class:`Unavailable` when that
        read failed); None reads it here, blocking."""
        start = time.perf_counter() if start is None else start
        models = self.models  # one snapshot for the whole request
        share = self.settings.serving.ab_challenger_share
        experiment = experiment_id(models, share)
        variant = variant_for(req.user_id, share, salt=experiment) if experiment else CHAMPION
        loaded = models.get(variant)
        k = min(req.k, self.settings.serving.max_k)
        out: dict[str, Any] = {
            "user_id_hash": redact_id(req.user_id),
            "variant": variant,
            "experiment": experiment,
        }
        if loaded is None:
            return self._fallback(out, k, req, "no model loaded yet", start, None)
        k = min(k, len(loaded.bundle.item_ids))
        feats = self._read_blocking(req.user_id) if features is None else features
        if isinstance(feats, Unavailable):
            return self._fallback(
                out, k, req, f"feature store unavailable: {feats}"[:200], start, loaded
            )
        history = list(feats.get("recent_items") or [])
        if not history and req.user_id not in loaded.bundle.encoders.users:
            return self._fallback(out, k, req, "cold user: no history", start, loaded)
        items, degraded = items_for(self, loaded, req, feats, history, k)
        if self.settings.serving.shadow and variant == CHAMPION and CHALLENGER in models:
            t = time.perf_counter()
            shadow, _ = items_for(self, models[CHALLENGER], req, feats, history, k)
            overlap = len({i for i, _ in shadow} & {i for i, _ in items}) / max(k, 1)
            metrics.SHADOW_OVERLAP.observe(overlap)
            metrics.observe_stage("shadow", time.perf_counter() - t)
        if len(items) < k:  # filters left too few: top up from the fallback list
            self.degradations.record(
                "topped up from fallback",
                f"{len(items)} of {k} items left after filters",
                metric=metrics.DEGRADATIONS,
            )
            extra = self._fallback_items(k - len(items), req, history, {i for i, _ in items})
            items += extra
        if degraded is not None:  # the ranker could not rank: retrieval order, flagged
            self.degradations.record(UNAVAILABLE, degraded, metric=metrics.FALLBACKS)
            degraded = f"{UNAVAILABLE}: {degraded} (served retrieval order)"
        out.update(
            items=[{"item_id": i, "score": s} for i, s in items],
            model_version=loaded.version,
            fallback=degraded is not None,
            fallback_reason=degraded,
        )
        return self._done(out, start, req, UNAVAILABLE if degraded else None)

    def _read_blocking(self, user_id: str) -> dict[str, Any] | Unavailable:
        t = time.perf_counter()
        try:
            return self._features([user_id])[0]
        except Unavailable as exc:
            return exc
        finally:
            metrics.observe_stage("features", time.perf_counter() - t)

    def _retrieve(
        self,
        loaded: Loaded,
        req: RecommendRequest,
        feats: dict[str, Any],
        history: list[str],
        k: int,
        vec: np.ndarray | None = None,
    ) -> list[tuple[str, float]]:
        """Retrieval order through the filters: the index is asked for enough items that
        ``k`` are likely left (the banned ones on top, ``20 k`` under a category filter),
        and for four times more while too few are. ``vec``: the user's query when the
        caller computed it already (the ranked path's top-up)."""
        bundle = loaded.bundle
        if vec is None:
            t = time.perf_counter()
            dense = dense_row(feats, bundle.dense_names, int(time.time() * 1000))
            vec = bundle.user_vectors([req.user_id], [history], dense)
            metrics.observe_stage("user_tower", time.perf_counter() - t)
        rows_ok = RowFilter(bundle, req, history)
        n_items = len(bundle.item_ids)
        fetch = min(n_items, k + rows_ok.n_banned + 20)
        if req.filters and req.filters.include_categories:
            fetch = min(n_items, max(fetch, k * 20))
        while True:
            t = time.perf_counter()
            scores, rows = bundle.search_rows(vec, fetch)
            metrics.observe_stage("search", time.perf_counter() - t)
            keep = rows_ok.first(rows[0], k)
            picked = list(zip(bundle.ids_of(rows[0][keep]), scores[0][keep].tolist(), strict=True))
            # A padded result (row -1 at its end) holds every item the index reaches for
            # this query (an IVF index probes a few lists): asking for more returns the same
            # items padded further, at the cost of a search and a scan as large as the
            # catalog.
            if len(picked) >= k or fetch >= n_items or rows[0][-1] < 0:
                return picked
            fetch = min(n_items, fetch * 4)

    def _fallback_items(
        self, k: int, req: RecommendRequest, history: list[str], taken: set[str]
    ) -> list[tuple[str, float]]:
        candidates, _ = self.popular.items()
        banned = banned_ids(req, history) | taken
        loaded = self.models.get(CHAMPION)
        pairs = ((item, 1.0 / (rank + 1)) for rank, item in enumerate(candidates))
        if loaded is None:
            return [(i, s) for i, s in pairs if i not in banned][:k]
        return passing(loaded.bundle.item_categories, req, pairs, banned, k)

    def _fallback(
        self,
        out: dict[str, Any],
        k: int,
        req: RecommendRequest,
        reason: str,
        start: float,
        loaded: Loaded | None,
    ) -> dict[str, Any]:
        history: list[str] = []
        items = self._fallback_items(k, req, history, set())
        _, source = self.popular.items()
        label = reason.split(":")[0]
        # An internal error is logged at ERROR with its traceback by the caller.
        self.degradations.record(
            label, reason, metric=metrics.FALLBACKS, log=label != "internal error"
        )
        out.update(
            items=[{"item_id": i, "score": s} for i, s in items],
            model_version=loaded.version if loaded else None,
            fallback=True,
            fallback_reason=f"{reason} (served {source} items)",
        )
        return self._done(out, start, req, label)

    def _done(
        self, out: dict[str, Any], start: float, req: RecommendRequest, label: str | None = None
    ) -> dict[str, Any]:
        """Every answer, fallbacks too, ends here: its ``request_id`` (128 random bits as 32
        hex characters), the request metrics, its impression queued (``label``: the
        fallback reason's label)."""
        out["request_id"] = secrets.token_hex(16)
        elapsed = time.perf_counter() - start
        metrics.observe_stage("total", elapsed)
        metrics.record(metrics.REQUESTS, 1, out["variant"], str(out["fallback"]).lower())
        out["server_ms"] = round(elapsed * 1000, 3)
        if self.impressions is not None:
            self.impressions.record(req.user_id, req.k, out, label)
        return out

    def similar(self, item_id: str, k: int) -> dict[str, Any]:
        loaded = self.models.get(CHAMPION)
        if loaded is None:
            raise Unavailable("no model loaded yet")
        pairs = loaded.bundle.similar_items(item_id, min(k, self.settings.serving.max_k))
        return {
            "item_id": item_id,
            "items": [{"item_id": i, "score": s} for i, s in pairs],
            "model_version": loaded.version,
        }


def _scrubbed_traceback(user_id: str) -> str:
    """The current exception's traceback with the raw user id replaced by its token
    (an error message such as ``KeyError('u42')`` must not put the id in the logs)."""
    import traceback

    return traceback.format_exc().replace(user_id, redact_id(user_id))


def _as_number(version: str | None) -> float:
    try:
        return float(version) if version is not None else -1.0
    except ValueError:
        return 0.0
