"""The demo's steps up to the service under load: stack, data, replay, service, burst,
and the shifted part of the stream. Each takes the run's :class:`DemoContext` and
returns the step's output (what the summary line and the report show)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np

from rtrec.app.demo.burst import http_burst
from rtrec.app.demo.context import DataSplit, DemoContext
from rtrec.config import Settings

logger = logging.getLogger(__name__)

QUICK_REQUESTS, FULL_REQUESTS = 400, 2000
"""HTTP requests of the burst, with ``--quick`` and without."""

FEEDBACK_SHARE = 0.2
"""Share of recommendations the burst clicks on (posted back as feedback)."""


def rtrec_command() -> list[str]:
    """The rtrec CLI of this interpreter, for processes the demo starts."""
    return [sys.executable, "-m", "rtrec.app.cli"]


def wait_logged(settings: Settings, timeout_s: float = 600) -> dict[str, Any]:
    """Block until the offline event log holds every event published so far (its
    watermark reaches the topic's end offsets): what the DAGs read is then complete.
    Raises ``Unavailable`` naming what is missing after ``timeout_s``."""
    from rtrec.streaming import wait_for_offline_log

    cov = wait_for_offline_log(settings, timeout_s=timeout_s)
    return {
        "logged_after_publish_s": round(cov.waited_s, 1),
        "logged_event_time_ms": cov.event_time_ms,
    }


def stack_up(ctx: DemoContext) -> dict[str, Any]:
    """Start the embedded stack (broker, Redis, directories). A component not healthy
    right after its start is named in the step's output and logged at WARNING: the
    steps after it fail loudly if it stays so, but the reader sees where to look."""
    from rtrec.app import stack

    bad = [f"{r.name}: {r.detail}" for r in stack.up(ctx.settings) if not r.healthy]
    if not bad:
        return {"healthy": True}
    logger.warning("embedded stack not healthy right after its start: %s", "; ".join(bad))
    return {"healthy": False, "unhealthy": "; ".join(bad)}


def make_data(ctx: DemoContext) -> dict[str, Any]:
    """Synthetic events with a distribution shift at 80% of the time span, or a MovieLens
    data set cut at its 80% time quantile."""
    from rtrec.data import ShiftConfig, SyntheticConfig, generate, load_dataset

    if ctx.data == "synthetic":
        base = (
            SyntheticConfig.small(n_events=60_000)
            if ctx.quick
            else SyntheticConfig(n_events=300_000, n_users=10_000, n_items=5_000)
        )
        cfg = base.model_copy(
            update={"seed": ctx.settings.seed, "shift": ShiftConfig(at_fraction=0.8)}
        )
        ds = generate(cfg)
        cut = int(ds.meta["shift_ts"])
    else:
        ds = load_dataset(ctx.data)
        cut = int(np.quantile(ds.events["ts"], 0.8))
    ctx.split = DataSplit(ds, ds.time_slice(None, cut), ds.time_slice(cut, None), cut)
    s = ds.summary()
    return {k: s[k] for k in ("n_users", "n_items", "n_events", "days") if k in s}


def stream_before(ctx: DemoContext) -> dict[str, Any]:
    """Replay the events before the shift through Kafka into the feature store, and wait
    until the offline log holds them all."""
    from rtrec.app import stack
    from rtrec.app.dag_runs import migrate
    from rtrec.features import apply
    from rtrec.streaming import replay_dataset

    settings = ctx.settings
    apply(settings)
    # The Airflow DB and the warm runner get ready while the events stream.
    ctx.runner_ready = ctx.background.submit(lambda: (migrate(settings), ctx.runner.start()))
    pid = stack.start_managed(
        settings, "stream-0", [*rtrec_command(), "stream", "run"], ready=lambda: True
    )
    sent = replay_dataset(settings, ctx.need_split().before, progress=True)
    return {
        "published": int(sent["published"]),
        "produce_events_per_s": round(sent["events_per_s"]),
        "processor_pid": pid,
        **wait_logged(settings),
    }


def serve(ctx: DemoContext) -> dict[str, Any]:
    """Start the BentoML service detached; it loads the champion from MLflow."""
    import httpx

    from rtrec.app.cli.serving import start_detached

    settings = ctx.settings
    pid = start_detached(settings)
    url = f"http://{settings.serving.host}:{settings.serving.port}"
    keys = [k.get_secret_value() for k in settings.serving.api_keys]
    resp = httpx.get(f"{url}/status", headers={"X-API-Key": keys[0]} if keys else {})
    out: dict[str, Any] = {"url": url, "pid": pid}
    if resp.status_code != 200:
        return out | {"ranker": f"not read: /status answered {resp.status_code}"}
    champion = resp.json()["models"]["champion"]
    return out | {"version": champion["version"], **_ranker(champion)}


def _ranker(champion: dict[str, Any]) -> dict[str, Any]:
    """Which stages answer: ``loaded`` is the two-stage system, ``unavailable`` retrieval
    order (each answer flagged, with the reason here), ``none`` a retrieval-only bundle."""
    ranker = champion.get("ranker") or {}
    out = {"ranker": ranker.get("state"), "ranker_version": ranker.get("version")}
    return out | ({"ranker_error": ranker["error"]} if ranker.get("error") else {})


def burst(ctx: DemoContext) -> dict[str, Any]:
    """Recommendations for known users and two new ones, with clicks as feedback on the
    data's clock (see :func:`rtrec.app.demo.burst.http_burst`)."""
    before = ctx.need_split().before
    users = [
        *before.events["user_id"].drop_duplicates().tolist()[:2000],
        "new-user-1",
        "new-user-2",
    ]
    out = http_burst(
        ctx.settings,
        users,
        requests=QUICK_REQUESTS if ctx.quick else FULL_REQUESTS,
        feedback_share=FEEDBACK_SHARE,
        data_now_ms=int(before.events["ts"].max()) + 1,
    )
    ctx.extras["latencies"] = out.latencies
    ctx.feedback_ts = out.clicked_ts
    ctx.extras["latency_summary"] = {k: out.figures[k] for k in ("p50_ms", "p95_ms", "p99_ms")}
    return dict(out.figures)


def stream_after(ctx: DemoContext) -> dict[str, Any]:
    """Publish the events after the shift, and wait until the offline log holds them."""
    from rtrec.streaming import publish

    after = ctx.need_split().after
    sent = publish(ctx.settings, after.iter_keyed_event_json(), total=len(after.events))
    return {"published": int(sent["published"]), **wait_logged(ctx.settings)}
