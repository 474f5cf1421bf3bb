"""The BentoML service: ``bentoml serve serving.service:Recommender`` (or ``rtrec serve``).

A FastAPI app mounted on the service carries the REST API (``/recommend``,
``/similar/{item_id}``, ``/feedback``, ``/status``, ``/openapi.json``); BentoML adds
``/healthz``, ``/livez``, ``/readyz`` (ready once a champion is loaded) and ``/metrics``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import bentoml
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving.schemas import (
    FeedbackRequest,
    FeedbackResponse,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
)

logger = logging.getLogger(__name__)

app = FastAPI(
    title="rtrec recommendations",
    version="1",
    description="Real-time recommendations: online features -> two-tower -> FAISS.",
)
OPEN_PATHS = {
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
}


def _error(status: int, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status)


@app.middleware("http")
async def guard(request: Request, call_next: Any) -> Any:
    """Body size limit (413), API key (401) and per-key rate limit (429), in that order."""
    state = request.app.state
    if request.url.path not in OPEN_PATHS and hasattr(state, "keys"):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > state.max_body:
            return _error(413, f"body of {length} bytes exceeds {state.max_body}", "body")
        bucket = state.keys.check(request.headers.get("x-api-key"))
        if bucket is None:
            return _error(401, "missing or invalid X-API-Key header", "X-API-Key")
        if not state.limiter.allow(bucket):
            return _error(429, "rate limit exceeded for this API key", "X-API-Key")
    return await call_next(request)


@app.exception_handler(RequestValidationError)
async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = ".".join(str(p) for p in first.get("loc", ()))
    detail = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "msg": e.get("msg")}
        for e in errors[:10]
    ]
    return _error(422, f"invalid request: {field}: {first.get('msg')}", field, detail=detail)


@app.post("/recommend", response_model=RecommendResponse)
async def recommend(body: RecommendRequest, request: Request) -> Any:
    """Top-k items for a user; unknown users and outages get a flagged fallback, never a 500."""
    engine = request.app.state.engine
    try:
        return engine.recommend(body)
    except Exception as exc:  # last line of defence: degrade, log the reason, stay up
        logger.exception("recommend failed; serving fallback")
        out = {"user_id_hash": "", "variant": "champion"}
        import time

        return engine._fallback(
            out,
            min(body.k, 50),
            body,
            f"internal error: {type(exc).__name__}",
            time.perf_counter(),
            None,
        )


@app.get("/similar/{item_id}", response_model=SimilarResponse)
async def similar(item_id: str, request: Request, k: int = Query(10, ge=1, le=1000)) -> Any:
    """Items closest to ``item_id`` in the item embedding space."""
    from rtrec.errors import NotFound, Unavailable

    if not item_id or len(item_id) > 128:
        return _error(422, "item_id must have 1 to 128 characters", "item_id")
    try:
        return request.app.state.engine.similar(item_id, k)
    except NotFound as exc:
        return _error(404, str(exc), "item_id")
    except Unavailable as exc:
        return _error(503, str(exc))


@app.post("/feedback", response_model=FeedbackResponse, status_code=202)
async def feedback(body: FeedbackRequest, request: Request) -> Any:
    """Interaction events onto Kafka (the stream processor turns them into features)."""
    from rtrec.errors import InvalidInput, Unavailable
    from rtrec.events import parse_event

    try:
        events = [parse_event(e) for e in body.events]
    except InvalidInput as exc:
        return _error(422, str(exc), f"events.{exc.field}")
    try:
        await run_in_threadpool(request.app.state.publish, events)
    except Unavailable as exc:
        return _error(503, str(exc))
    return {"accepted": len(events)}


@app.get("/status")
async def status(request: Request) -> Any:
    """Loaded versions, readiness and the last lifecycle error (no user data)."""
    st = request.app.state
    return {
        "ready": st.engine.ready,
        "models": {
            v: {"version": m.version, "source": m.source} for v, m in st.engine.models.items()
        },
        "last_error": st.watcher.last_error,
        "fallback_source": st.engine.popular.items()[1],
    }


class _Publisher:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._producer: Any = None

    def __call__(self, events: list[Any]) -> None:
        from rtrec.errors import Unavailable

        try:
            if self._producer is None:
                from kafka import KafkaProducer

                self._producer = KafkaProducer(
                    bootstrap_servers=self.settings.kafka.bootstrap_servers,
                    linger_ms=1,
                    max_block_ms=5000,
                )
            futures = [
                self._producer.send(
                    self.settings.kafka.events_topic, key=e.user_id.encode(), value=e.to_json()
                )
                for e in events
            ]
            for f in futures:
                f.get(timeout=5)
        except Exception as exc:
            raise Unavailable(f"event broker unavailable: {exc}") from exc


@bentoml.service(name="rtrec", traffic={"timeout": 10, "concurrency": 256}, workers=1)
@bentoml.asgi_app(app, path="/")
class Recommender:
    """Loads the champion (or ``serving.bundle_path``) at start and watches for new ones."""

    def __init__(self) -> None:
        import torch

        from rtrec.config import get_settings
        from rtrec.logging import configure_logging
        from serving.auth import ApiKeys, RateLimiter
        from serving.lifecycle import ModelWatcher
        from serving.retrieval import Engine

        settings = get_settings()
        configure_logging("INFO")
        torch.set_num_threads(settings.serving.threads)
        self.engine = Engine(settings)
        self.watcher = ModelWatcher(settings, self.engine.swap)
        state = app.state
        state.engine, state.watcher = self.engine, self.watcher
        state.keys = ApiKeys([k.get_secret_value() for k in settings.serving.api_keys])
        state.limiter = RateLimiter(settings.serving.rate_limit_per_s)
        state.max_body = settings.serving.max_body_bytes
        state.publish = _Publisher(settings)
        self.engine.popular.start()
        self._warm_features()
        self.watcher.initial_load()
        self.watcher.start()
        logger.info(
            "service started", extra={"ready": self.engine.ready, "auth": state.keys.enabled}
        )

    def _warm_features(self) -> None:
        """Build the Feast store now, not on the first request (it takes seconds)."""
        self.engine.online.warm()
        self.engine.online.start()

    def __is_ready__(self) -> bool:
        return self.engine.ready


def openapi_json() -> str:
    return json.dumps(app.openapi())
