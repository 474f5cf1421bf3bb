"""``rtrec demo``: the main job, the whole loop on the embedded default.

stack up -> data (synthetic with a shift, or MovieLens) -> replay through Kafka into the
feature store -> the Airflow ``rtrec_training`` DAG (Spark training set, two-tower,
evaluation, MLflow, FAISS, promotion) -> BentoML service -> a burst of HTTP requests with
feedback -> the shifted part of the stream -> the ``rtrec_drift_monitor`` DAG (Evidently
verdict, alert, triggers training) -> the triggered training run -> hot swap -> report
-> stop. DAG runs go through one warm :class:`dags.runs.DagRunner` (Airflow's in-process
runner on the embedded metadata DB); ``--keep-running`` also starts the Airflow UI to browse them.
Each step calls one stage's public API; the demo adds progress, timing and the report.
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
    from dags.runs import DagRunner, DagRunResult


@dataclass
class DemoReport:
    steps: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        click.secho(f"==> {name}", fg="cyan", bold=True, err=True)
        start = time.perf_counter()
        out = fn() or {}
        seconds = time.perf_counter() - start
        self.steps.append({"step": name, "seconds": round(seconds, 2), **out})
        detail = ", ".join(f"{k}={v}" for k, v in out.items() if not isinstance(v, list | dict))
        click.echo(f"    done in {seconds:.1f} s{': ' + detail if detail else ''}", err=True)
        return out


def _wait_caught_up(settings: Settings, timeout: float = 600) -> float:
    """Block until the stream processor has applied everything on the events topic."""
    import redis
    from kafka import KafkaConsumer, TopicPartition

    from streaming.processor import offsets_key

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    topic = settings.kafka.events_topic
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    ends = {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
    consumer.close()
    client = redis.Redis.from_url(settings.redis.url)
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        applied = {int(p): int(o) + 1 for p, o in client.hgetall(offsets_key(settings)).items()}
        if all(applied.get(p, 0) >= end for p, end in ends.items()):
            return time.perf_counter() - start
        time.sleep(0.2)
    raise click.ClickException(f"stream processor did not catch up within {timeout:.0f} s")


def _burst(
    settings: Settings, users: list[str], *, requests: int, feedback_share: float
) -> dict[str, Any]:
    """Concurrent keep-alive clients; clicks on some recommendations go back as feedback."""
    import httpx

    base = f"http://{settings.serving.host}:{settings.serving.port}"
    keys = [k.get_secret_value() for k in settings.serving.api_keys]
    headers = {"X-API-Key": keys[0]} if keys else {}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    fallbacks = 0
    clicks = 0
    rng = random.Random(settings.seed)
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:

        def one(i: int) -> tuple[float, int, bool, int]:
            user = users[i % len(users)]
            t = time.perf_counter()
            r = client.post("/recommend", json={"user_id": user, "k": 10})
            ms = (time.perf_counter() - t) * 1000
            fb, clicked = False, 0
            if r.status_code == 200:
                body = r.json()
                fb = body["fallback"]
                if body["items"] and rng.random() < feedback_share:
                    item = body["items"][0]["item_id"]
                    event = {
                        "user_id": user,
                        "item_id": item,
                        "event_type": "click",
                        "ts": int(time.time() * 1000) - 60_000,
                        "context": {"source": "rtrec-demo"},
                    }
                    clicked = int(
                        client.post("/feedback", json={"events": [event]}).status_code == 202
                    )
            return ms, r.status_code, fb, clicked

        with ThreadPoolExecutor(8) as pool:
            for ms, code, fb, clicked in pool.map(one, range(requests)):
                latencies.append(ms)
                statuses[code] = statuses.get(code, 0) + 1
                fallbacks += fb
                clicks += clicked
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
    }


def _dag(runner: DagRunner, dag_id: str, conf: dict[str, Any], **kw: Any) -> DagRunResult:
    """One DAG run through Airflow (a warm ``dags.runs.DagRunner``); a failed run stops
    the demo."""
    run = runner.run(dag_id, conf, **kw)
    if not run.ok:
        failed = [t for t, v in run.tasks.items() if v["state"] not in ("success", "skipped")]
        raise click.ClickException(f"{dag_id} run {run.state}: tasks {failed}; log {run.log}")
    return run


def _metrics_row(fit: dict[str, Any]) -> dict[str, Any]:
    """Test-split metrics per model from the train task's XCom."""
    test = fit["test_metrics"]
    return {
        name: {k: round(v, 4) for k, v in m.items() if k in ("ndcg@10", "recall@10", "map@10")}
        for name, m in test.items()
    }


def _report(path: Path, report: DemoReport, extras: dict[str, Any]) -> Path:
    from rtrec.report import Section, new_figure, write_html_report

    sections = [
        Section(
            "Steps",
            "",
            [("", ["step", "seconds"], [[s["step"], s["seconds"]] for s in report.steps])],
        )
    ]
    for label in ("before_shift", "after_shift"):
        q = extras.get(f"quality_{label}")
        if q:
            rows = [
                [m, v.get("ndcg@10"), v.get("recall@10"), v.get("map@10")] for m, v in q.items()
            ]
            sections.append(
                Section(
                    f"Quality {label.replace('_', ' ')} (test split, full ranking)",
                    "",
                    [("", ["model", "ndcg@10", "recall@10", "map@10"], rows)],
                )
            )
    lat = extras.get("latencies")
    if lat:
        fig, ax = new_figure()
        ax.hist(lat, bins=60)
        ax.set_xlabel("ms")
        ax.set_title("/recommend latency seen by the client")
        sections.append(
            Section("Serving latency", json.dumps(extras.get("latency_summary")), [], [fig])
        )
    drift = extras.get("drift")
    if drift:
        fig, ax = new_figure()
        cols = drift["columns"]
        ax.bar([c["column"] for c in cols], [c["score"] for c in cols])
        ax.axhline(cols[0]["threshold"] if cols else 0.1, color="red", linestyle="--")
        ax.set_title(f"Drift per column (share {drift['drift_share']:.0%})")
        sections.append(Section("Drift check after the shift", drift["reason"], [], [fig]))
    return write_html_report(path, "rtrec demo", sections)


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
    from dags.runs import DagRunner, migrate
    from rtrec import stack
    from rtrec.data import ShiftConfig, SyntheticConfig, generate, load_dataset

    settings = get_settings()
    report = DemoReport()
    extras: dict[str, Any] = {}
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
            from features import apply
            from streaming import replay_dataset

            apply(settings)
            # The Airflow DB and the warm runner get ready while the events stream.
            holder["runner_ready"] = background.submit(lambda: (migrate(settings), runner.start()))
            pid = stack.start_managed(
                settings, "stream-0", [*_rtrec(), "stream", "run"], ready=lambda: True
            )
            sent = replay_dataset(settings, holder["before"], progress=True)
            waited = _wait_caught_up(settings)
            return {
                "published": int(sent["published"]),
                "produce_events_per_s": round(sent["events_per_s"]),
                "processor_pid": pid,
                "drain_after_publish_s": round(waited, 1),
            }

        report.step("replay through Kafka into the feature store", stream_before)

        def train_first() -> dict[str, Any]:
            holder["runner_ready"].result()
            run = _dag(runner, "rtrec_training", {"epochs": epochs, "reason": "demo: first"})
            holder["first"] = run
            extras["quality_before_shift"] = _metrics_row(run.xcom("train_two_tower"))
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
            from serving.cli import start_detached

            pid = start_detached(settings)
            return {"url": f"http://{settings.serving.host}:{settings.serving.port}", "pid": pid}

        report.step("BentoML service up (champion from MLflow)", serve)
        users = [
            *holder["before"].events["user_id"].drop_duplicates().tolist()[:2000],
            "new-user-1",
            "new-user-2",
        ]

        def burst() -> dict[str, Any]:
            out = _burst(settings, users, requests=400 if quick else 2000, feedback_share=0.2)
            extras["latencies"] = out.pop("_latencies")
            extras["latency_summary"] = {k: out[k] for k in ("p50_ms", "p95_ms", "p99_ms")}
            return out

        report.step("burst of HTTP recommendations with feedback", burst)

        def stream_after() -> dict[str, Any]:
            from streaming import publish

            after = holder["after"]
            sent = publish(settings, after.iter_keyed_event_json(), total=len(after.events))
            waited = _wait_caught_up(settings)
            return {"published": int(sent["published"]), "drain_s": round(waited, 1)}

        report.step("distribution shift arrives on the stream", stream_after)

        def drift() -> dict[str, Any]:
            # The monitor's run one day after the shift: the latest day against the week
            # before it (the window the champion was trained on).
            conf = {"now_ms": holder["cut"] + 86_400_000, "window_days": 1.0}
            run = _dag(runner, "rtrec_drift_monitor", conf)
            verdict = run.xcom("drift_check")
            extras["drift"] = verdict
            holder["retrain_queued"] = bool(run.queued.get("rtrec_training"))
            return {
                "airflow_run": run.run_id,
                "drifted": verdict["drifted"],
                "drift_share": round(verdict["drift_share"], 2),
                "retraining_triggered": holder["retrain_queued"],
                "reason": verdict["reason"][:120],
            }

        report.step("Airflow rtrec_drift_monitor (Evidently): alert, trigger", drift)

        def retrain() -> dict[str, Any]:
            if not holder["retrain_queued"]:
                return {"skipped": "no drift detected, nothing triggered"}
            # The run the drift monitor queued, with its reason in the conf; its last
            # task waits until the live service reports the new champion.
            run = _dag(runner, "rtrec_training", {"epochs": epochs}, queued=True)
            holder["second"] = run
            extras["quality_after_shift"] = _metrics_row(run.xcom("train_two_tower"))
            decision = run.xcom("promote")
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
            decision = second.xcom("promote") if second is not None else None
            if not (decision and decision["promoted"]):
                return {"skipped": "no new champion"}
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
            from dags import embedded

            report.step("Airflow UI up (the demo's runs)", lambda: {"pid": embedded.up(settings)})
    _summary(settings, report, extras, keep_running)
    if not ok:
        raise click.ClickException("demo failed")


def _rtrec() -> list[str]:
    import sys

    return [sys.executable, "-m", "rtrec.cli"]


def _summary(
    settings: Settings, report: DemoReport, extras: dict[str, Any], keep_running: bool
) -> None:
    click.secho("\nsummary", bold=True, err=True)
    for s in report.steps:
        click.echo(f"  {s['step']:<58} {s['seconds']:>7.1f} s", err=True)
    for label in ("before_shift", "after_shift"):
        if f"quality_{label}" in extras:
            click.echo(f"  quality {label}: {json.dumps(extras[f'quality_{label}'])}", err=True)
    if "latency_summary" in extras:
        click.echo(f"  latency: {json.dumps(extras['latency_summary'])}", err=True)
    click.echo(f"  report: {extras.get('report')}", err=True)
    where = {
        "airflow": f"http://127.0.0.1:{settings.airflow.port}"
        + ("" if keep_running else " (rtrec airflow up)"),
        "mlflow": f"mlflow ui --backend-store-uri {settings.mlflow.tracking_uri}",
        "evidently": "rtrec monitor ui (workspace " + str(settings.monitoring.workspace) + ")",
        "api": f"http://{settings.serving.host}:{settings.serving.port}/docs"
        + ("" if keep_running else " (stopped)"),
    }
    click.echo(f"  UIs: {json.dumps(where)}", err=True)
    click.echo(
        json.dumps(
            {
                "steps": report.steps,
                "report": extras.get("report"),
                "latency": extras.get("latency_summary"),
                "drift": extras.get("drift", {}).get("drifted"),
            },
            default=str,
        )
    )
