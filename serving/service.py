"""The BentoML service: ``bentoml serve rtrec.serving.service:Recommender`` (or ``rtrec serve``).

A FastAPI app mounted on the service carries the REST API (``/recommend``,
``/similar/{item_id}``, ``/feedback``, ``/status``, ``/experiments``, ``/openapi.json``,
and ``/docs`` and ``/redoc`` from installed files, :mod:`rtrec.serving.docs`); BentoML
adds ``/healthz``, ``/livez`` and ``/readyz`` (ready once a champion is loaded);
``/metrics`` and the route-labelled request metrics come from
:class:`rtrec.serving.edge.RouteMetrics`. Heavy imports (torch, faiss, Feast, MLflow)
happen in ``__init__`` only.

The hot path is kept lean on purpose (p99 <= 10 ms at 200 req/s on 2 cores): a pure ASGI
guard instead of Starlette's HTTP middleware, responses serialised once with ``json``
(the response model documents them), BentoML's per-request access log off.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import bentoml
import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from rtrec.serving.auth import Guard
from rtrec.serving.docs import add_docs
from rtrec.serving.edge import RejectControlPaths, ReplicaHeader, RouteMetrics, use_header_deadline
from rtrec.serving.impressions import ImpressionLog
from rtrec.serving.launch import SERVICE_SETTINGS
from rtrec.serving.schemas import (
    ITEM_ID_PATTERN,
    ExperimentsResponse,
    FeedbackRequest,
    FeedbackResponse,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
    StatusResponse,
    error_responses,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
"""A request whose headers are not complete this long after the connection opened (or
after the previous response on it) gets 408 and is closed: see :mod:`rtrec.serving.edge`."""
PROBES = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})

app = FastAPI(
    title="rtrec recommendations",
    version="1",
    description="Real-time recommendations: online features -> two-tower -> FAISS.",
    docs_url=None,  # FastAPI's pages load from a CDN; rtrec.serving.docs serves installed files
    redoc_url=None,
)
OPEN_PATHS = frozenset({"/openapi.json"}) | add_docs(app)
app.add_middleware(Guard, open_paths=OPEN_PATHS)
API_KEY_SCHEME = {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}


def _openapi() -> dict[str, Any]:
    """FastAPI's description plus the ``X-API-Key`` scheme the guard enforces on every
    operation (the guard is middleware, which FastAPI cannot see), so clients and
    generated SDKs know a key is expected."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = API_KEY_SCHEME
        schema["security"] = [{"ApiKey": []}]
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]


def _json(payload: Any, status: int = 200) -> Response:
    """orjson: a fifth of the stdlib encoder's time on a 50-item answer, on the loop."""
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _error(status: int, message: str, field: str | None = None, **extra: Any) -> Response:
    return _json({"error": message, "field": field, **extra}, status)


@app.exception_handler(RequestValidationError)
async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the first offending field (``user_id``, ``filters.include_categories``)."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    loc = tuple(first.get("loc", ())) or ("body",)
    if loc[0] == "body" and len(loc) > 1 and isinstance(loc[1], str):
        loc = loc[1:]  # "user_id" rather than "body.user_id"; bad JSON stays "body.<pos>"
    field = ".".join(str(p) for p in loc)
    detail = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "msg": e.get("msg")}
        for e in errors[:10]
    ]
    message = f"invalid request: {field}: {first.get('msg')}"
    return JSONResponse({"error": message, "field": field, "detail": detail}, status_code=422)


@app.exception_handler(StarletteHTTPException)
async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
    """Framework errors in the service's error shape; an undecodable body is a 422."""
    if exc.status_code == 400:  # FastAPI: "There was an error parsing the body"
        return _error(422, f"invalid request: body: {exc.detail}", "body")
    out = _error(
        exc.status_code, str(exc.detail), "body" if exc.status_code in (408, 413) else None
    )
    out.headers.update(exc.headers or {})  # e.g. Allow on 405
    return out


@app.post("/recommend", response_model=RecommendResponse, responses=error_responses(422))
async def recommend(body: RecommendRequest, request: Request) -> Response:
    """Top-k items for a user; unknown users and outages get a flagged fallback, never a 500.
    Every answer has a ``request_id`` and is logged as an impression (off the request path)."""
    return _json(await request.app.state.engine.recommend_async(body))


@app.get(
    "/similar/{item_id}", response_model=SimilarResponse, responses=error_responses(404, 422, 503)
)
async def similar(
    request: Request,
    item_id: str = Path(min_length=1, max_length=128, pattern=ITEM_ID_PATTERN, examples=["i7"]),
    k: int = Query(10, ge=1, le=1000, examples=[5]),
) -> Response:
    """Items closest to ``item_id`` in the item embedding space."""
    from rtrec.errors import NotFound, Unavailable

    try:
        return _json(request.app.state.engine.similar(item_id, k))
    except NotFound as exc:
        return _error(404, str(exc), "item_id")
    except Unavailable as exc:
        return _error(503, str(exc))


@app.post(
    "/feedback",
    response_model=FeedbackResponse,
    status_code=202,
    responses=error_responses(422, 503),
)
async def feedback(body: FeedbackRequest, request: Request) -> Response:
    """Interaction events onto Kafka (the stream processor turns them into features),
    each stamped with the sending key's name in ``context.source_key``."""
    from rtrec.serving.feedback import source_name, stamp

    from rtrec.errors import InvalidInput, Unavailable
    from rtrec.events import parse_event

    principal = request.scope["rtrec.principal"]  # set by the Guard for every request here
    source = source_name(principal)
    events = []
    for n, event in enumerate(body.events):
        if not principal.may_write(event.user_id):
            why = f"events.{n}: API key '{principal.name}' may not write feedback for this user"
            return _error(403, why, f"events.{n}.user_id")
        raw = stamp(event.model_dump(mode="json", exclude_none=True), source)
        try:  # the contract's own checks too (ts in the future, rating without a value)
            events.append(parse_event(raw))
        except InvalidInput as exc:
            return _error(422, f"events.{n}: {exc}", f"events.{n}.{exc.field}")
    try:
        await run_in_threadpool(request.app.state.publish, events)
    except Unavailable as exc:
        return _error(503, str(exc))
    return _json({"accepted": len(events)}, 202)


@app.get("/status", response_model=StatusResponse, responses=error_responses())
async def status(request: Request) -> Response:
    """Loaded versions, readiness, the last lifecycle error and the degradations since
    start: counts per reason and the last one (no user data)."""
    st = request.app.state
    return _json(
        {
            "ready": st.engine.ready,
            "models": {v: m.status for v, m in st.engine.models.items()},
            "last_error": st.watcher.last_error,
            "online_store_down": st.engine.online.down_reason,
            "online_store_nodes_down": st.engine.online.nodes_down,
            "event_broker_down": st.publish.down_reason,
            "fallback_source": st.engine.popular.items()[1],
            "degradations": st.engine.degradations.status(),
            "loop": st.loop_watch.status(),
        }
    )


def _readout() -> dict[str, Any]:
    """The readout ``GET /experiments`` answers (``app.state.readout``; tests swap it)."""
    from rtrec.serving.experiment_readout import experiment_status

    from rtrec.config import get_settings

    return experiment_status(get_settings())


app.state.readout = _readout


@app.get("/experiments", response_model=ExperimentsResponse, responses=error_responses())
async def experiments(request: Request) -> Response:
    """The A/B readout per experiment and variant: exposure, outcome rates with 95 %
    intervals, lift and p-value (two-proportion z-test on click-through per impression),
    the sample-ratio-mismatch check and the verdict. Needs the ``admin`` scope."""
    from redis.exceptions import RedisError

    try:
        return _json(await run_in_threadpool(request.app.state.readout))
    except RedisError as exc:
        return _error(503, f"experiment aggregates unavailable (Redis): {exc}")


def _tracing() -> dict[str, Any]:
    """BentoML's tracing configuration for this service: untouched with
    ``serving.tracing``; otherwise every path excluded from its OpenTelemetry middleware,
    which with no exporter and nothing sampled still builds a span per request."""
    from rtrec.config import get_settings

    return {} if get_settings().serving.tracing else {"excluded_urls": ["/"]}


def _start_degradations(degradations: Any, exposure: str) -> None:
    """Count what the start-up already knows is degraded, so /status shows it."""
    from rtrec.serving.metrics import DEGRADATIONS

    if not HEADER_DEADLINE:  # use_header_deadline logged it at WARNING
        degradations.record(
            "no header deadline", "no httptools for uvicorn", metric=DEGRADATIONS, log=False
        )
    if exposure == "anonymous":
        degradations.record(  # logged at WARNING, shown in /status
            "anonymous access",
            "no API keys on a non-loopback address (serving.allow_anonymous)",
            metric=DEGRADATIONS,
        )


@bentoml.service(name="rtrec", **SERVICE_SETTINGS, tracing=_tracing())
@bentoml.asgi_app(app, path="/")
class Recommender:
    """Loads the champion (or ``serving.bundle_path``) at start and watches for new ones."""

    def __init__(self) -> None:
        import torch
        from rtrec.serving.auth import ApiKeys, limiter_for
        from rtrec.serving.feedback import Publisher
        from rtrec.serving.launch import refuse_exposed_start
        from rtrec.serving.lifecycle import ModelWatcher
        from rtrec.serving.retrieval import Engine
        from rtrec.serving.stalls import LoopWatch

        from rtrec.config import get_settings
        from rtrec.logging import configure_logging, load_redact_salt

        settings = get_settings()
        configure_logging("INFO")
        exposure = refuse_exposed_start(settings.serving)  # no keys on an open address: stop
        load_redact_salt(settings)
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        torch.set_num_threads(settings.serving.threads)
        # The loop thread waits for the GIL whenever a background thread (the impression
        # producer, the probes) holds it, up to the switch interval: 5 ms by default,
        # a whole latency budget. 1 ms bounds that wait at a small cost in switches.
        sys.setswitchinterval(0.001)
        self.engine = Engine(settings)
        _start_degradations(self.engine.degradations, exposure)
        self.watcher = ModelWatcher(
            settings, self.engine.swap, degradations=self.engine.degradations
        )
        state = app.state
        state.engine, state.watcher = self.engine, self.watcher
        state.limiter = limiter_for(settings, self.engine.degradations)
        state.max_body, state.loop_watch = settings.serving.max_body_bytes, LoopWatch()
        state.publish = Publisher(settings)
        state.publish.start()
        if settings.serving.impressions:  # every answer logged, off the request path
            self.engine.impressions = ImpressionLog.started(settings, self.engine.degradations)
        state.keys = ApiKeys(settings.serving.api_keys)  # the Guard answers 503 until this
        self.engine.popular.start()
        self.engine.online.warm()
        self.engine.online.start()
        self.watcher.initial_load()
        self.watcher.start()
        logger.info(
            "service started",
            extra={
                "ready": self.engine.ready,
                "auth": exposure,
                "keys": state.keys.names,
                "tracing": settings.serving.tracing,
                "impressions": settings.serving.impressions,
            },
        )

    @bentoml.on_startup
    async def watch_loop(self) -> None:
        """Heartbeat on the serving loop and collector timing (see serving.stalls); the
        request path's metrics written out every second (see serving.metrics.record)."""
        from rtrec.serving.metrics import start_flushing
        from rtrec.serving.stalls import time_collections

        time_collections()
        app.state.loop_watch.start()
        app.state.stop_flushing = start_flushing()

    def __is_ready__(self) -> bool:
        return self.engine.ready

    @bentoml.on_shutdown
    def flush_impressions(self) -> None:
        """Send the impressions still queued (a bounded wait); the rest are counted."""
        app.state.loop_watch.stop()
        app.state.stop_flushing.set()
        if self.engine.impressions is not None:
            self.engine.impressions.shutdown()


Recommender.add_asgi_middleware(RouteMetrics, api=app, skip=PROBES)  # first: outermost
Recommender.add_asgi_middleware(RejectControlPaths)
Recommender.add_asgi_middleware(ReplicaHeader)  # X-Rtrec-Replica behind a load balancer
# At import, not in __init__: the worker's uvicorn picks its protocol before that runs.
HEADER_DEADLINE = use_header_deadline(HEADER_TIMEOUT_S)


def openapi_json() -> str:
    """The API description (for docs and schema-based fuzzing without a server)."""
    return json.dumps(app.openapi())
