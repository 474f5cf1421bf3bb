"""Soak: a real server under steady load for a long time, with feedback changing features.

    python bench/soak.py                       # 10 minutes at 200 req/s
    python bench/soak.py --duration-s 90       # a quick check of the same thing

Steps: build (or reuse) a synthetic bundle; start an embedded stack (Tansu + Redis) on
free ports, a stream processor and the service; seed online histories; warm up; then
for ``--duration-s`` offer ``--rate`` /recommend requests per second (open loop, latency
from each request's due time, :mod:`rtrec.serving.loadgen`) while another thread posts click
events to /feedback (published to Kafka, folded into the users' online features by the
processor) and a third samples the resident memory of the server's whole process tree.

Figures: errors (any non-2xx recommendation, any non-202 feedback), p50/p99/p99.9/max of
the whole run, p99 of the first and of the last minute (windows of ``--window-s``, at
most half the run each), the slowest requests with their due times (seconds from the
start and UTC, to match a long tail with a log line or a collector pause), the load
generator's own stalls (its loop late by over 10 ms: latency the server did not cause), and RSS
growth: median RSS over the last window against the median over the first (after the
warm-up). Also how many feedback users' latest click reached their online features. The
last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench._common import (
    free_port,
    fresh_stack_settings,
    seed_histories,
    service_env,
    start_stream_processor,
)

KEY = "soak-key"


class Feedback(threading.Thread):
    """Posts ``rate`` click events/s (batches of 1-3) for ``users`` until stopped."""

    def __init__(self, url: str, users: list[str], items: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.users, self.items, self.rate = url, users, items, rate
        self.accepted = self.errors = 0
        self.statuses: dict[int, int] = {}
        self.last_click: dict[str, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import httpx

        rng = np.random.default_rng(5)
        start, sent = time.perf_counter(), 0
        with httpx.Client(base_url=self.url, headers={"X-API-Key": KEY}, timeout=5) as c:
            while not self.stop.is_set():
                n = int(rng.integers(1, 4))
                now = int(time.time() * 1000)
                events = []
                for _ in range(n):
                    user = self.users[int(rng.integers(len(self.users)))]
                    item = self.items[int(rng.integers(len(self.items)))]
                    events.append(
                        {"user_id": user, "item_id": item, "event_type": "click", "ts": now}
                    )
                try:
                    status = c.post("/feedback", json={"events": events}).status_code
                except httpx.HTTPError:
                    status = 0
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 202:
                    self.accepted += n
                    self.last_click.update({e["user_id"]: e["item_id"] for e in events})
                else:
                    self.errors += 1
                sent += n
                self.stop.wait(max(0.0, start + sent / self.rate - time.perf_counter()))


class RssSampler(threading.Thread):
    """Every ``every_s``: (seconds since start, RSS bytes summed over pid and descendants)."""

    def __init__(self, pid: int, every_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.t0 = time.perf_counter()

    def rss(self) -> int:
        import psutil

        root = psutil.Process(self.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a child that just exited
                total += proc.memory_info().rss
        return total

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.samples.append((time.perf_counter() - self.t0, self.rss()))


def window_p99_ms(samples: list[tuple[float, float]], lo: float, hi: float) -> float:
    """p99 (ms) of the requests due in [lo, hi) seconds from the start."""
    arr = np.asarray([lat for due, lat in samples if lo <= due < hi]) * 1000
    return round(float(np.percentile(arr, 99)), 3) if len(arr) else float("nan")


def window_rss(samples: list[tuple[float, int]], lo: float, hi: float) -> float:
    vals = [rss for t, rss in samples if lo <= t < hi]
    return float(np.median(vals)) if vals else float("nan")


def seen_online(settings, last_click: dict[str, str], n: int = 200) -> float | None:
    """Share of (up to ``n``) feedback users whose latest click is in their online history."""
    from rtrec.features import online_features

    users = list(last_click)[-n:]
    if not users:
        return None
    rows = online_features(settings, users)
    pairs = zip(users, rows, strict=True)
    hits = sum(last_click[u] in (row.get("recent_items") or []) for u, row in pairs)
    return round(hits / len(users), 3)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration-s", type=float, default=600.0, help="measured run (s)")
    ap.add_argument("--rate", type=float, default=200.0, help="/recommend requests per second")
    ap.add_argument("--feedback-rate", type=float, default=20.0, help="click events per second")
    ap.add_argument("--warmup-s", type=float, default=20.0, help="load before measuring (s)")
    ap.add_argument("--window-s", type=float, default=60.0, help="first/last window (s)")
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=5000, help="users in the model's vocabulary")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workdir", default="/tmp/rtrec-bench-soak")
    return ap.parse_args()


def soak_bundle(args: argparse.Namespace) -> Path:
    """The synthetic bundle of this size, built once and reused."""
    from rtrec.serving.synthetic import synthetic_bundle
    from rtrec.training import METADATA

    bundle_dir = Path(args.workdir) / f"bundle-{args.items}x{args.dim}-u{args.users}"
    if not (bundle_dir / METADATA).exists():
        print(f"building a {args.items}-item bundle in {bundle_dir} (one-off)...", flush=True)
        synthetic_bundle(bundle_dir, n_items=args.items, n_users=args.users, dim=args.dim, seed=7)
    return bundle_dir


def seed_half(settings, users: list[str], items: list[str]) -> None:
    """Online histories for half the users, 5-20 recent items each."""
    rng = np.random.default_rng(3)
    histories = {
        u: [items[i] for i in rng.choice(len(items), rng.integers(5, 21))]
        for u in users[: len(users) // 2]
    }
    seed_histories(settings, histories)


def soak(srv, settings, args: argparse.Namespace, users: list[str], items: list[str]) -> dict:
    """Warm up, then the measured run with feedback and RSS sampling beside it."""
    from rtrec.serving.loadreport import run_rate

    rng = np.random.default_rng(11)
    bodies = [
        json.dumps({"user_id": users[p], "k": 10}).encode() for p in rng.choice(len(users), 50_000)
    ]
    fallbacks = [0]

    def body_for(i: int) -> bytes:
        return bodies[i % len(bodies)]

    def tally(_: int, status: str, body: bytes) -> None:
        if status == "200" and (b'"fallback":true' in body or b'"fallback": true' in body):
            fallbacks[0] += 1

    hdr = {"X-API-Key": KEY}
    feedback = Feedback(srv.url, users, items, args.feedback_rate)
    feedback.start()
    print(f"warm-up {args.warmup_s:.0f} s at {args.rate:.0f} req/s...", flush=True)
    run_rate(
        srv.url, "/recommend", body_for, rate=args.rate, duration_s=args.warmup_s,
        connections=args.connections, headers=hdr,
    )  # fmt: skip
    sampler = RssSampler(srv.pid)
    sampler.samples.append((0.0, sampler.rss()))
    sampler.start()
    accepted_before = feedback.accepted
    print(f"soak {args.duration_s:.0f} s at {args.rate:.0f} req/s...", flush=True)
    res = run_rate(
        srv.url, "/recommend", body_for, rate=args.rate, duration_s=args.duration_s,
        connections=args.connections, headers=hdr, on_response=tally,
    )  # fmt: skip
    sampler.stop.set()
    feedback.stop.set()
    feedback.join(timeout=10)
    sampler.join(timeout=10)
    time.sleep(2)  # the processor's last micro-batch
    return {
        "res": res,
        "feedback": feedback,
        "feedback_events": feedback.accepted - accepted_before,
        "rss": sampler.samples,
        "fallbacks": fallbacks[0],
        "seen": seen_online(settings, feedback.last_click),
        "server_log": srv.log_text(),
    }


def figures(run: dict, *, duration_s: float, window: float) -> dict:
    """The soak's figures from what :func:`soak` collected."""
    from rtrec.serving.loadreport import utc_iso

    res, feedback, end = run["res"], run["feedback"], duration_s
    rss_first = window_rss(run["rss"], 0, window)
    rss_last = window_rss(run["rss"], end - window, end + 10)
    return {
        "errors": res.errors + feedback.errors,
        "recommend_errors": res.errors,
        "feedback_errors": feedback.errors,
        "p99_first_min_ms": window_p99_ms(res.samples, 0, window),
        "p99_last_min_ms": window_p99_ms(res.samples, end - window, end),
        "p50_ms": round(res.p50_ms, 3),
        "p95_ms": round(res.p95_ms, 3),
        "p99_ms": round(res.p99_ms, 3),
        "p999_ms": round(res.p999_ms, 3),
        "max_ms": round(res.max_ms, 3),
        "started_utc": utc_iso(res.started_unix),
        "slowest": res.slowest,
        "client_stalls": res.client_stalls,
        "requests": res.sent,
        "achieved_rps": round(res.achieved_rps, 1),
        "statuses": res.statuses,
        "fallbacks": run["fallbacks"],
        "feedback_events": run["feedback_events"],
        "feedback_statuses": feedback.statuses,
        "feedback_seen_online": run["seen"],
        "rss_first_mb": round(rss_first / 2**20, 1),
        "rss_last_mb": round(rss_last / 2**20, 1),
        "rss_growth": round(rss_last / rss_first - 1, 4),
        "server_log_errors": run["server_log"].count('"level": "ERROR"'),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    args = parse_args()
    from rtrec.serving.process import running_server
    from rtrec.training import load_bundle

    from rtrec.app.stack import down, up
    from rtrec.logging import configure_logging

    configure_logging("WARNING", json_lines=False)
    bundle_dir = soak_bundle(args)
    settings = fresh_stack_settings(Path(args.workdir) / "work")
    bundle = load_bundle(bundle_dir, use_gpu=False)
    items, users = list(bundle.item_ids), list(bundle.encoders.users.ids)
    del bundle
    window = min(args.window_s, args.duration_s / 2)
    out: dict[str, object] = {
        "duration_s": args.duration_s,
        "rate_rps": args.rate,
        "window_s": window,
        "catalog_items": len(items),
    }
    try:
        up(settings)
        from rtrec.features import apply

        apply(settings)
        seed_half(settings, users, items)
        start_stream_processor(settings, "stream-soak")
        env = service_env(bundle_dir, KEY)
        log = settings.log_dir / "serving-soak.log"
        with running_server(free_port(), env=env, log=log, timeout=300) as srv:
            run = soak(srv, settings, args, users, items)
        out.update(figures(run, duration_s=args.duration_s, window=window))
        print(f"  {json.dumps(out)}", flush=True)
    finally:
        down(settings)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
