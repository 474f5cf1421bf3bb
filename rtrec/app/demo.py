"""``rtrec demo``: the main job, the whole loop on the embedded default.

stack up -> data (synthetic with a shift, or MovieLens) -> replay through Kafka into the
feature store -> the Airflow ``rtrec_training`` DAG (Spark training set, two-tower,
evaluation, MLflow, FAISS, promotion) -> BentoML service -> a burst of HTTP requests with
feedback -> the shifted part of the stream -> the ``rtrec_drift_monitor`` DAG (Evidently
verdict, alert, triggers training) -> the triggered training run -> hot swap -> report
-> stop. DAG runs go through one warm :class:`rtrec.app.dag_runs.DagRunner` (Airflow's in-process
runner on the embedded metadata DB); ``--keep-running`` also starts the Airflow UI to browse them.
Each step calls one stage's public API; the demo adds progress, timing and the report.

The demo waits on the offline event log's watermark (``rtrec.streaming.wait_for_offline_log``),
never on time: after each publish until the log holds every event published, and the
drift check itself judges only windows the log covers. A step it promised that did not
happen (drift not judged, retraining not triggered, no swap) is shown as skipped with its
reason, and the demo then exits non-zero; a gate that refuses the new model is an outcome
("not promoted: reason"), not a failure.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from rtrec.config import Settings, get_settings

if TYPE_CHECKING:
    from rtrec.app.dag_runs import DagRunner, DagRunResult


class Missed(Exception):
    """A step the demo promised did not happen (or not as promised): the demo goes on,
    shows the step with ``status`` and the reason, and exits non-zero at the end."""

    def __init__(self, reason: str, *, status: str = "skipped", **details: Any) -> None:
        super().__init__(reason)
        self.reason, self.status, self.details = reason, status, details


@dataclass
class DemoReport:
    steps: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)
    """"step: reason" of each promised step that did not happen."""
    offsets: list[float] = field(default_factory=list)
    """Each step's start, seconds after the first step started (parallel to ``steps``):
    the report's timeline."""
    _t0: float | None = field(default=None, repr=False)

    def step(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        """Run one step. ``fn`` raises :class:`Missed` for a promised step that did not
        happen, or returns ``status`` (default "done") and ``reason`` for an outcome
        other than done that is no failure (e.g. "not promoted"); only a done step
        has seconds."""
        click.secho(f"==> {name}", fg="cyan", bold=True, err=True)
        start = time.perf_counter()
        self._t0 = start if self._t0 is None else self._t0
        self.offsets.append(round(start - self._t0, 2))
        try:
            out = fn() or {}
        except Missed as exc:
            self.missed.append(f"{name}: {exc.status}: {exc.reason}")
            self.steps.append(
                {
                    "step": name,
                    "status": exc.status,
                    "seconds": None,
                    "reason": exc.reason,
                    "missed": True,
                }
                | exc.details
            )
            click.secho(f"    {exc.status}: {exc.reason}", fg="red", err=True)
            return dict(exc.details)
        seconds = time.perf_counter() - start
        status = str(out.pop("status", "done"))
        took = round(seconds, 2) if status == "done" else None
        self.steps.append({"step": name, "status": status, "seconds": took, **out})
        detail = ", ".join(f"{k}={v}" for k, v in out.items() if not isinstance(v, list | dict))
        head = f"done in {seconds:.1f} s" if status == "done" else status
        click.echo(f"    {head}{': ' + detail if detail else ''}", err=True)
        return out


def _wait_logged(settings: Settings, timeout_s: float = 600) -> dict[str, Any]:
    """Block until the offline event log holds every event published so far (its
    watermark reaches the topic's end offsets): what the DAGs read is then complete.
    Raises ``Unavailable`` naming what is missing after ``timeout_s``."""
    from rtrec.streaming import wait_for_offline_log

    cov = wait_for_offline_log(settings, timeout_s=timeout_s)
    return {
        "logged_after_publish_s": round(cov.waited_s, 1),
        "logged_event_time_ms": cov.event_time_ms,
    }


def _in_windows(
    ts: np.ndarray, now_ms: int, reference_days: float, window_days: float
) -> list[int]:
    """How many of the published events' times fall in the monitor's reference and
    current windows (``rtrec.monitoring.split_windows``'s bounds)."""
    day = 86_400_000
    cut = now_ms - int(window_days * day)
    start = cut - int(reference_days * day)
    return [int(((ts >= start) & (ts < cut)).sum()), int(((ts >= cut) & (ts < now_ms)).sum())]


def _burst(
    settings: Settings,
    users: list[str],
    *,
    requests: int,
    feedback_share: float,
    data_now_ms: int,
) -> dict[str, Any]:
    """Concurrent keep-alive clients; clicks on some recommendations go back as feedback.

    Clicks are stamped on the data's clock, not the wall clock: ``data_now_ms`` (the
    newest replayed event's time) plus the time since the burst began. The replayed
    stream lives in its own time (a synthetic 2025, a MovieLens decade); wall-clock clicks
    would land years after every window the drift monitor judges, and its outcome rate
    would miss them all. On the data's clock they fall in the current window with the
    events they answer.
    """
    import httpx

    base = f"http://{settings.serving.host}:{settings.serving.port}"
    keys = [k.get_secret_value() for k in settings.serving.api_keys]
    headers = {"X-API-Key": keys[0]} if keys else {}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    fallbacks = 0
    clicks = 0
    clicked_ts: list[int] = []
    rng = random.Random(settings.seed)
    began = time.perf_counter()
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:

        def one(i: int) -> tuple[float, int, bool, int, int]:
            user = users[i % len(users)]
            t = time.perf_counter()
            r = client.post("/recommend", json={"user_id": user, "k": 10})
            ms = (time.perf_counter() - t) * 1000
            fb, clicked, ts = False, 0, 0
            if r.status_code == 200:
                body = r.json()
                fb = body["fallback"]
                if body["items"] and rng.random() < feedback_share:
                    item = body["items"][0]["item_id"]
                    ts = data_now_ms + int((time.perf_counter() - began) * 1000)
                    event = {
                        "user_id": user,
                        "item_id": item,
                        "event_type": "click",
                        "ts": ts,
                        "context": {"source": "rtrec-demo"},
                    }
                    clicked = int(
                        client.post("/feedback", json={"events": [event]}).status_code == 202
                    )
            return ms, r.status_code, fb, clicked, ts

        with ThreadPoolExecutor(8) as pool:
            for ms, code, fb, clicked, ts in pool.map(one, range(requests)):
                latencies.append(ms)
                statuses[code] = statuses.get(code, 0) + 1
                fallbacks += fb
                clicks += clicked
                if clicked:
                    clicked_ts.append(ts)
    lat = np.array(latencies)
    return {
        "requests": requests,
        "statuses": {str(k): v for k, v in statuses.items()},
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "fallbacks": fallbacks,
        "clicks_posted": clicks,
        "_latencies": latencies,
        "_clicked_ts": clicked_ts,
    }


def _dag(runner: DagRunner, dag_id: str, conf: dict[str, Any], **kw: Any) -> DagRunResult:
    """One DAG run through Airflow (a warm ``rtrec.app.dag_runs.DagRunner``); a failed run stops
    the demo."""
    run = runner.run(dag_id, conf, **kw)
    if not run.ok:
        failed = [t for t, v in run.tasks.items() if v["state"] not in ("success", "skipped")]
        raise click.ClickException(f"{dag_id} run {run.state}: tasks {failed}; log {run.log}")
    return run


def _metrics_row(fit: dict[str, Any]) -> dict[str, Any]:
    """Held-out metrics per model from the train task's XCom (the gate slice: the most
    recent period, untouched by selection; every model refitted on train + validation)."""
    heldout = fit["heldout_metrics"]
    return {
        name: {k: round(v, 4) for k, v in m.items() if k in ("ndcg@10", "recall@10", "map@10")}
        for name, m in heldout.items()
    }


def _timeline_rows(report: DemoReport) -> list[dict[str, Any]]:
    """Each step with its start offset, duration, outcome and the model versions it
    trained and served (the champion serves from "service up" on; a swap changes it)."""
    rows = []
    champion = serving = None
    for i, s in enumerate(report.steps):
        notes = []
        if s.get("version") is not None:
            promoted = s.get("promoted")
            if promoted:
                champion = s["version"]
            verdict = {True: "promoted", False: "kept the champion"}.get(promoted, "")
            notes.append(f"trained v{s['version']}" + (f", {verdict}" if verdict else ""))
        if "url" in s and champion is not None:  # the service loads the champion
            serving = champion
        if s.get("serving_version") is not None:
            serving = s["serving_version"]
        if serving is not None:
            notes.append(f"serving v{serving}")
        offset = report.offsets[i] if i < len(report.offsets) else 0.0
        rows.append(
            {
                "step": s["step"],
                "start_s": offset,
                "seconds": s.get("seconds"),
                "status": s.get("status", "done"),
                "model": "; ".join(notes),
                "reason": s.get("reason") if s.get("status", "done") != "done" else "",
            }
        )
    return rows


SIZE_KEYS = {
    "n_users": "users",
    "n_items": "items",
    "n_events": "events generated",
    "days": "days of data",
    "published": "events published",
    "requests": "HTTP requests",
    "clicks_posted": "feedback clicks posted",
    "reference_rows": "reference window: events judged",
    "published_reference_rows": "reference window: events published",
    "current_rows": "current window: events judged",
    "published_current_rows": "current window: events published",
}
"""Step outputs that are data sizes, and what the report calls them."""


def _sizes_rows(report: DemoReport) -> list[list[Any]]:
    return [
        [s["step"], label, s[key]]
        for s in report.steps
        for key, label in SIZE_KEYS.items()
        if s.get(key) is not None
    ]


def _report(path: Path, report: DemoReport, extras: dict[str, Any]) -> Path:
    """The run's HTML report: timeline, steps (skipped ones with their reason), data
    sizes, quality, the gate's decisions, latency percentiles and the drift check."""
    from rtrec.app.report import (
        Section,
        drift_figure,
        latency_figure,
        steps_section,
        timeline_figure,
        write_html_report,
    )

    sections = []
    timeline = _timeline_rows(report)
    if timeline:
        sections.append(
            Section(
                "Timeline",
                "Each step from its start (seconds after the run began); versions are the "
                "MLflow model versions trained and served.",
                [
                    (
                        "",
                        ["step", "start (s)", "seconds", "outcome", "model", "reason"],
                        [
                            [
                                r["step"],
                                r["start_s"],
                                r["seconds"],
                                r["status"],
                                r["model"],
                                r["reason"],
                            ]
                            for r in timeline
                        ],
                    )
                ],
                [timeline_figure(timeline)],
            )
        )
    sections.append(steps_section(report.steps))
    sizes = _sizes_rows(report)
    if sizes:
        sections.append(Section("Data sizes", "", [("", ["step", "what", "count"], sizes)]))
    for label in ("before_shift", "after_shift"):
        q = extras.get(f"quality_{label}")
        if q:
            rows = [
                [m, v.get("ndcg@10"), v.get("recall@10"), v.get("map@10")] for m, v in q.items()
            ]
            sections.append(
                Section(
                    f"Quality {label.replace('_', ' ')} (gate slice, full ranking)",
                    "",
                    [("", ["model", "ndcg@10", "recall@10", "map@10"], rows)],
                )
            )
        elif extras.get(f"quality_{label}_missing"):
            why = extras[f"quality_{label}_missing"]
            sections.append(Section(f"Quality {label.replace('_', ' ')}", f"not measured: {why}"))
    if extras.get("gates"):
        sections.append(_gate_section(extras["gates"]))
    lat = extras.get("latencies")
    if lat:
        fig, rows = latency_figure(lat, "/recommend latency seen by the client")
        sections.append(
            Section(
                "Serving latency",
                f"{len(lat):,} requests from 8 concurrent keep-alive clients.",
                [("", ["percentile", "ms"], rows)],
                [fig],
            )
        )
    drift = extras.get("drift")
    if drift:
        figures = []
        cols = drift["columns"]
        if cols:
            figures.append(drift_figure(cols, drift["drift_share"]))
        published = extras.get("drift_published", [None, None])
        windows = [
            ["reference", drift["reference_rows"], published[0]],
            ["current", drift["current_rows"], published[1]],
        ]
        columns = [
            [
                c["column"],
                c["method"],
                c["score"],
                c["threshold"],
                "drifted" if c["drifted"] else "stable",
            ]
            for c in cols
        ]
        tables = [("windows", ["window", "events judged", "events published"], windows)]
        if columns:
            tables.append(
                ("columns", ["column", "method", "distance", "threshold", "verdict"], columns)
            )
        outcome = drift.get("outcome")
        if outcome:
            tables.append(
                (
                    "outcome rate (clicks per view)",
                    ["reference", "current", "z", "verdict"],
                    [
                        [
                            outcome["reference_rate"],
                            outcome["current_rate"],
                            outcome["z"],
                            "moved" if outcome["drifted"] else "steady",
                        ]
                    ],
                )
            )
        as_of = drift.get("as_of") or {}
        sections.append(
            Section(
                "Drift check after the shift",
                f"{drift.get('summary', drift['reason'])} — offline log "
                f"({as_of.get('mode', '?')}): {as_of.get('note', '')}",
                tables,
                figures,
                warnings=[] if drift.get("judged", True) else [drift["reason"]],
            )
        )
    return write_html_report(path, "rtrec demo", sections)


def _gate_section(gates: list[tuple[str, dict[str, Any]]]) -> Any:
    """Each training run's promotion decision with its evidence (rtrec.training.gate)."""
    from rtrec.app.report import Section

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:+.2%}"

    rows = []
    for label, d in gates:
        e = d.get("evidence") or {}
        sl = e.get("slice") or {}
        champ = e.get("champion_version")
        rows.append(
            [
                label,
                f"v{d.get('version')}",
                "promoted" if d.get("promoted") else "kept the champion",
                f"{sl.get('rows', '?')} events, {sl.get('users', '?')} users",
                f"{e.get('challenger', float('nan')):.4f}",
                "-" if champ is None else f"v{champ} {e.get('champion', float('nan')):.4f}",
                f"{pct(e.get('gain'))} [{pct(e.get('ci_low'))}, {pct(e.get('ci_high'))}]",
                f"{d.get('margin') or 0:.1%}",
            ]
        )
    header = [
        "run",
        "version",
        "decision",
        "gate slice",
        "challenger ndcg@10",
        "champion ndcg@10",
        "gain [95% CI]",
        "margin",
    ]
    text = "; ".join(f"{label}: {d.get('reason', '')}" for label, d in gates)
    return Section(
        "Promotion gate (gate slice, users x items bootstrap)", text, [("", header, rows)]
    )


@click.command()
@click.option("--quick", is_flag=True, help="Small data set; the whole loop in about 3 minutes.")
@click.option(
    "--data", default="synthetic", show_default=True, help="synthetic or a MovieLens path."
)
@click.option("--keep-running", is_flag=True, help="Leave the stack and the service up at the end.")
@click.option(
    "--epochs",
    type=int,
    default=None,
    help="Cap on training epochs (default: each candidate objective's own schedule).",
)
def demo(quick: bool, data: str, keep_running: bool, epochs: int | None) -> None:
    """Run the whole loop on the embedded default and write an HTML report."""
    from rtrec.app import stack
    from rtrec.app.dag_runs import DagRunner, migrate
    from rtrec.data import ShiftConfig, SyntheticConfig, generate, load_dataset

    settings = get_settings()
    report = DemoReport()
    extras: dict[str, Any] = {"gates": []}
    ok = True
    # All DAG runs go through one warm runner (Airflow, torch, the Spark JVM loaded once).
    runner = DagRunner(settings, warm=True)
    background = ThreadPoolExecutor(1)
    try:
        report.step(
            "embedded stack up", lambda: {"healthy": all(r.healthy for r in stack.up(settings))}
        )
        holder: dict[str, Any] = {}

        def make_data() -> dict[str, Any]:
            if data == "synthetic":
                base = (
                    SyntheticConfig.small(n_events=60_000)
                    if quick
                    else SyntheticConfig(n_events=300_000, n_users=10_000, n_items=5_000)
                )
                cfg = base.model_copy(
                    update={"seed": settings.seed, "shift": ShiftConfig(at_fraction=0.8)}
                )
                ds = generate(cfg)
                cut = int(ds.meta["shift_ts"])
            else:
                ds = load_dataset(data)
                cut = int(np.quantile(ds.events["ts"], 0.8))
            holder.update(
                ds=ds, before=ds.time_slice(None, cut), after=ds.time_slice(cut, None), cut=cut
            )
            s = ds.summary()
            return {k: s[k] for k in ("n_users", "n_items", "n_events", "days") if k in s}

        report.step("generate data", make_data)

        def stream_before() -> dict[str, Any]:
            from rtrec.features import apply
            from rtrec.streaming import replay_dataset

            apply(settings)
            # The Airflow DB and the warm runner get ready while the events stream.
            holder["runner_ready"] = background.submit(lambda: (migrate(settings), runner.start()))
            pid = stack.start_managed(
                settings, "stream-0", [*_rtrec(), "stream", "run"], ready=lambda: True
            )
            sent = replay_dataset(settings, holder["before"], progress=True)
            return {
                "published": int(sent["published"]),
                "produce_events_per_s": round(sent["events_per_s"]),
                "processor_pid": pid,
                **_wait_logged(settings),
            }

        report.step("replay through Kafka into the feature store", stream_before)

        def train_first() -> dict[str, Any]:
            holder["runner_ready"].result()
            run = _dag(runner, "rtrec_training", {"epochs": epochs, "reason": "demo: first"})
            holder["first"] = run
            extras["quality_before_shift"] = _metrics_row(run.xcom("train_two_tower"))
            extras["gates"].append(("first training", run.xcom("promote")))
            return {
                "airflow_run": run.run_id,
                "version": run.xcom("evaluate_and_register")["version"],
                "promoted": run.xcom("promote")["promoted"],
                **{
                    f"two_tower_{k}": v
                    for k, v in extras["quality_before_shift"]["two_tower"].items()
                },
            }

        report.step(
            "Airflow rtrec_training: Spark set, two-tower, MLflow, FAISS, gate", train_first
        )

        def serve() -> dict[str, Any]:
            from rtrec.app.cli.serving import start_detached

            pid = start_detached(settings)
            return {"url": f"http://{settings.serving.host}:{settings.serving.port}", "pid": pid}

        report.step("BentoML service up (champion from MLflow)", serve)
        users = [
            *holder["before"].events["user_id"].drop_duplicates().tolist()[:2000],
            "new-user-1",
            "new-user-2",
        ]

        def burst() -> dict[str, Any]:
            out = _burst(
                settings,
                users,
                requests=400 if quick else 2000,
                feedback_share=0.2,
                data_now_ms=int(holder["before"].events["ts"].max()) + 1,
            )
            extras["latencies"] = out.pop("_latencies")
            holder["feedback_ts"] = out.pop("_clicked_ts")
            extras["latency_summary"] = {k: out[k] for k in ("p50_ms", "p95_ms", "p99_ms")}
            return out

        report.step("burst of HTTP recommendations with feedback", burst)

        def stream_after() -> dict[str, Any]:
            from rtrec.streaming import publish

            after = holder["after"]
            sent = publish(settings, after.iter_keyed_event_json(), total=len(after.events))
            return {"published": int(sent["published"]), **_wait_logged(settings)}

        report.step("distribution shift arrives on the stream", stream_after)

        def drift() -> dict[str, Any]:
            # The monitor's run one day after the shift: the latest day against the week
            # before it (the window the champion was trained on).
            conf = {"now_ms": holder["cut"] + 86_400_000, "window_days": 1.0, "reference_days": 7.0}
            published = np.concatenate(
                [
                    holder["before"].events["ts"].to_numpy(np.int64),
                    holder["after"].events["ts"].to_numpy(np.int64),
                    np.asarray(holder.get("feedback_ts", []), np.int64),
                ]
            )
            expected = _in_windows(
                published, conf["now_ms"], conf["reference_days"], conf["window_days"]
            )
            extras["drift_published"] = expected
            run = _dag(runner, "rtrec_drift_monitor", conf)
            verdict = run.xcom("drift_check")
            extras["drift"] = verdict
            holder["retrain_queued"] = bool(run.queued.get("rtrec_training"))
            judged = [verdict["reference_rows"], verdict["current_rows"]]
            out = {
                "airflow_run": run.run_id,
                "status": "done",
                "verdict": verdict["status"],
                "drifted": verdict["drifted"],
                "drift_share": round(verdict["drift_share"], 2),
                "retraining_triggered": holder["retrain_queued"],
                "reference_rows": judged[0],
                "current_rows": judged[1],
                "published_reference_rows": expected[0],
                "published_current_rows": expected[1],
                "offline_log": (verdict.get("as_of") or {}).get("mode"),
                "reason": verdict["reason"][:120],
            }
            if not verdict["judged"]:
                holder["no_retrain"] = verdict["summary"]  # "not judged: <why>"
                raise Missed(
                    holder["no_retrain"], **{k: v for k, v in out.items() if k != "status"}
                )
            if judged != expected:
                holder["no_retrain"] = (
                    f"the drift check judged {judged[0]} + {judged[1]} events, "
                    f"{expected[0]} + {expected[1]} were published for its windows"
                )
                raise Missed(
                    holder["no_retrain"],
                    status="incomplete",
                    **{k: v for k, v in out.items() if k != "status"},
                )
            if not holder["retrain_queued"]:
                holder["no_retrain"] = f"no drift detected after the shift: {verdict['summary']}"
            return out

        report.step("Airflow rtrec_drift_monitor (Evidently): alert, trigger", drift)

        def retrain() -> dict[str, Any]:
            if not holder.get("retrain_queued"):
                why = holder.get("no_retrain", "the drift monitor triggered nothing")
                extras["quality_after_shift_missing"] = f"no retraining ran ({why})"
                raise Missed(f"not triggered: {why}")
            # The run the drift monitor queued, with its reason in the conf; its last
            # task waits until the live service reports the new champion.
            run = _dag(runner, "rtrec_training", {"epochs": epochs}, queued=True)
            holder["second"] = run
            extras["quality_after_shift"] = _metrics_row(run.xcom("train_two_tower"))
            decision = run.xcom("promote")
            extras["gates"].append(("retraining after the drift", decision))
            return {
                "airflow_run": run.run_id,
                "trigger": str(run.conf.get("reason", ""))[:80],
                "version": decision["version"],
                "promoted": decision["promoted"],
                "reason": decision["reason"][:120],
            }

        report.step("Airflow rtrec_training (triggered by the drift)", retrain)

        def swap() -> dict[str, Any]:
            import httpx

            second = holder.get("second")
            if second is None:
                raise Missed("no retraining ran, so there is no new model to swap in")
            decision = second.xcom("promote")
            if not decision["promoted"]:  # the gate's call: an outcome, not a failure
                return {"status": "not promoted", "reason": decision["reason"]}
            told = second.xcom("tell_serving") or {}
            base = f"http://{settings.serving.host}:{settings.serving.port}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                models = httpx.get(f"{base}/status", timeout=5).json()["models"]
                if models.get("champion", {}).get("version") == decision["version"]:
                    return {
                        "serving_version": decision["version"],
                        "told_by_dag": told.get("notified"),
                    }
                time.sleep(0.5)
            raise click.ClickException("the service did not pick up the new champion within 60 s")

        report.step("hot swap of the new champion", swap)
    except Exception:
        ok = False
        raise
    finally:
        background.shutdown(wait=True)
        runner.close(kill=not ok)
        path = settings.work_dir / "reports" / f"demo-{time.strftime('%Y%m%dT%H%M%S')}.html"
        try:
            extras["report"] = str(_report(path, report, extras))
        except Exception as exc:  # the report must not hide the real failure
            click.echo(f"report not written: {exc}", err=True)
        if not keep_running:
            report.step("stop everything", lambda: {"stopped": stack.down(settings)})
        elif ok:
            from rtrec.app import embedded_airflow as embedded

            report.step("Airflow UI up (the demo's runs)", lambda: {"pid": embedded.up(settings)})
    _summary(settings, report, extras, keep_running)
    if not ok:
        raise click.ClickException("demo failed")
    _fail_on_missed(report)


def _fail_on_missed(report: DemoReport) -> None:
    """Exit non-zero, naming them, when steps the demo promised did not happen."""
    if report.missed:
        raise click.ClickException(
            "the demo did not do everything it promised: " + "; ".join(report.missed)
        )


def _rtrec() -> list[str]:
    import sys

    return [sys.executable, "-m", "rtrec.app.cli"]


MLFLOW_UI_PORT = 15000
"""Port printed for the MLflow UI: clear of the stack's (serving 13000, Evidently 18000,
Airflow 18080) and of MLflow's 5000, which other tools often hold."""


def _ui_commands(
    settings: Settings, *, airflow_up: bool, serving_up: bool
) -> list[tuple[str, str]]:
    """Where to look after the demo: a URL for what is running, else the command that
    starts it (the venv's scripts by full path, ``RTREC_WORK_DIR`` when the demo had it)
    followed by the URL it serves."""
    import os
    import shlex
    import sys

    bin_dir = Path(sys.executable).parent
    env = [f"RTREC_WORK_DIR={settings.work_dir}"] if os.environ.get("RTREC_WORK_DIR") else []

    def cmd(script: str, *args: str, rtrec_env: bool = True) -> str:
        exe = bin_dir / script
        return shlex.join(
            [*(env if rtrec_env else []), str(exe) if exe.exists() else script, *args]
        )

    airflow = f"http://127.0.0.1:{settings.airflow.port}"
    store = str(settings.mlflow.tracking_uri)
    mlflow_args = ["ui", "--backend-store-uri", store, "--host", "127.0.0.1"]
    mlflow_args += ["--port", str(MLFLOW_UI_PORT)]
    mlflow = (
        store  # a tracking server is its own UI
        if store.startswith(("http://", "https://"))
        else f"{cmd('mlflow', *mlflow_args, rtrec_env=False)}  ->  "
        f"http://127.0.0.1:{MLFLOW_UI_PORT}"
    )
    api = f"http://{settings.serving.host}:{settings.serving.port}"
    return [
        ("Airflow", airflow if airflow_up else f"{cmd('rtrec', 'airflow', 'up')}  ->  {airflow}"),
        ("MLflow", mlflow),
        (
            "Evidently",
            f"{cmd('rtrec', 'monitor', 'ui')}  ->  http://127.0.0.1:{settings.monitoring.ui_port}",
        ),
        (
            "API docs",
            f"{api}/docs"
            if serving_up
            else f"{cmd('rtrec', 'up')} && {cmd('rtrec', 'serve', '--detach')}  ->  {api}/docs",
        ),
    ]


def _summary(
    settings: Settings, report: DemoReport, extras: dict[str, Any], keep_running: bool
) -> None:
    click.secho("\nsummary", bold=True, err=True)
    for s in report.steps:
        status = s.get("status", "done")
        if status == "done":
            click.echo(f"  {s['step']:<58} {s['seconds']:>7.1f} s", err=True)
        else:
            line = f"  {s['step']:<58} {status}: {s.get('reason', '')}"
            click.secho(line, fg="red" if s.get("missed") else "yellow", err=True)
    for label in ("before_shift", "after_shift"):
        if f"quality_{label}" in extras:
            click.echo(f"  quality {label}: {json.dumps(extras[f'quality_{label}'])}", err=True)
        elif f"quality_{label}_missing" in extras:
            why = extras[f"quality_{label}_missing"]
            click.echo(f"  quality {label}: not measured: {why}", err=True)
    drift = extras.get("drift")
    if drift:
        published = extras.get("drift_published", [None, None])
        click.echo(
            f"  drift: {drift.get('summary', drift['reason'])[:160]} (windows judged "
            f"{drift['reference_rows']} + {drift['current_rows']} events, published "
            f"{published[0]} + {published[1]})",
            err=True,
        )
    if "latency_summary" in extras:
        click.echo(f"  latency: {json.dumps(extras['latency_summary'])}", err=True)
    click.echo(f"  report: {extras.get('report')}", err=True)
    airflow_up = keep_running and any(
        s["step"].startswith("Airflow UI up") and s.get("status", "done") == "done"
        for s in report.steps
    )
    click.echo("  UIs:", err=True)
    for name, how in _ui_commands(settings, airflow_up=airflow_up, serving_up=keep_running):
        click.echo(f"    {name + ':':<10} {how}", err=True)
    click.echo(
        json.dumps(
            {
                "steps": report.steps,
                "report": extras.get("report"),
                "latency": extras.get("latency_summary"),
                "drift": extras.get("drift", {}).get("drifted"),
                "drift_status": extras.get("drift", {}).get("status"),
                "drift_windows": {
                    "judged": [
                        extras.get("drift", {}).get("reference_rows"),
                        extras.get("drift", {}).get("current_rows"),
                    ],
                    "published": extras.get("drift_published"),
                },
                "missed": report.missed,
            },
            default=str,
        )
    )
