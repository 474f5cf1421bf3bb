"""The serving benchmark's floor: the same HTTP stack answering without doing any work.

``service_overhead_ratio_p99`` divides the service's p99 by the model's own (bare
retrieval in process). Part of the service's p99 is not ours to cut: the load generator,
the TCP round trip, uvicorn's parsing, FastAPI's routing and body validation, and
serialising an answer, all on the same two cores. :class:`Floor` is a BentoML service with
the service's settings (one worker, the same traffic limits, access log and metrics off)
whose ``/recommend`` validates the same request model and answers a fixed list of ``k``
items in the service's response shape, and whose ``/similar/{item_id}`` answers the same
way. The benchmark offers it the same mix at 200 req/s with the same load generator, so
the floor's figures are what any service built this way would show here before doing
anything: the ceiling against which the service's own overhead reads. It is measured as
the service is: a warm-up, then 100 req/s, then 200 req/s (the figures).

    bentoml serve bench.serving_floor:Floor --port 3001   # to try it by hand
"""

from __future__ import annotations

import gc
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
import orjson
from fastapi import FastAPI, Query
from fastapi import Path as PathParam
from rtrec.serving.launch import SERVICE_SETTINGS
from rtrec.serving.schemas import RecommendRequest
from starlette.responses import Response

ROOT = Path(__file__).resolve().parents[1]
TARGET = "bench.serving_floor:Floor"

app = FastAPI(docs_url=None, redoc_url=None)
ITEMS = [{"item_id": f"i{j:06d}", "score": 1.0 / (j + 1)} for j in range(1000)]
"""The answer's items: ids as long as a 1M catalog's, float scores."""


def _json(payload: Any) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


@app.post("/recommend")
async def recommend(body: RecommendRequest) -> Response:
    """A fixed list of ``k`` items, shaped as the service's answer."""
    start = time.perf_counter()
    out = {
        "user_id_hash": "0" * 16,
        "variant": "champion",
        "experiment": None,
        "items": ITEMS[: body.k],
        "model_version": "floor",
        "fallback": False,
        "fallback_reason": None,
        "request_id": secrets.token_hex(16),
    }
    out["server_ms"] = round((time.perf_counter() - start) * 1000, 3)
    return _json(out)


@app.get("/similar/{item_id}")
async def similar(
    item_id: str = PathParam(min_length=1, max_length=128),
    k: int = Query(10, ge=1, le=1000),
) -> Response:
    return _json({"item_id": item_id, "items": ITEMS[:k], "model_version": "floor"})


@bentoml.service(name="rtrec-floor", **SERVICE_SETTINGS)
@bentoml.asgi_app(app, path="/")
class Floor:
    """No state: ready as soon as it is up. The service's process tuning, which is no
    work of its own: the start-up heap frozen out of the collector's reach (the service
    does so after each model load) and the 1 ms GIL switch interval."""

    def __init__(self) -> None:
        gc.collect()
        gc.freeze()
        sys.setswitchinterval(0.001)


def floor_figures(
    measure: Callable[[Any, float], dict[str, Any]], *, port: int, log: Path, rate: float
) -> dict[str, Any]:
    """The floor's figures at ``rate``: ``measure(server, rate)`` is the benchmark's own
    measurement of one rate (warm-up included), run against :class:`Floor`."""
    from rtrec.serving.process import running_server

    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with running_server(port, env=env, log=log, timeout=120, target=TARGET) as srv:
        row = measure(srv, rate)
    rec = row["recommend"]
    return {
        "floor_p50_ms_at200": rec["p50_ms"],
        "floor_p99_ms_at200": rec["p99_ms"],
        "floor_p999_ms_at200": rec["p999_ms"],
        "floor_errors_at200": row["errors"],
        "floor_cpu_s_per_request_at200": row["cpu_s_per_request"],
    }
