"""Serving latency: 1M-item catalog, real BentoML server, real Redis/Kafka, open-loop load.

    python bench/serving.py                       # 1M items, 64-d, rates 100..800 req/s
    python bench/serving.py --items 100000 --duration 5 --click-users 20   # quicker

Steps: build (or reuse) a synthetic 1M-item bundle (untrained two-tower + IVF index);
start an embedded stack (Tansu + Redis) on free ports, the stream processor and the
service; seed online histories; measure bare retrieval (user tower + FAISS, in this
process, no HTTP); offer fixed rates of /recommend over keep-alive connections
(latency from each request's due time); then the click-to-change time: post a click to
/feedback and poll /recommend until that user's list changes. The last line is JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench._common import free_port, service_env, start_stream_processor

KEY = "bench-key"
TARGET_MS = 10.0


class Tally:
    """Reads each 200 answer: the service's own time and whether it was a fallback."""

    def __init__(self) -> None:
        self.server_ms: list[float] = []
        self.fallbacks = 0

    def __call__(self, _: int, status: int, body: bytes) -> None:
        if status == 200:
            out = json.loads(body)
            self.server_ms.append(out["server_ms"])
            self.fallbacks += bool(out["fallback"])


def fresh_stack_settings(work: Path):
    """Settings for an embedded stack of this run's own: an emptied work dir and free
    ports, exported as RTREC_* so the processes the bench starts see them too.

    Fresh every run: the embedded broker keeps no data, so consumer offsets kept in an
    old Redis would point past the new topic's end and the processor would skip events.
    """
    from rtrec.config import get_settings

    shutil.rmtree(work, ignore_errors=True)
    os.environ.update(
        {
            "RTREC_WORK_DIR": str(work),
            "RTREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "RTREC_KAFKA__SESSION_TIMEOUT_MS": "2000",
            "RTREC_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0",
        }
    )
    get_settings.cache_clear()
    return get_settings()


def retrieval_device(gpus: int) -> str:
    """Where the GPU figure can be measured: only where faiss itself reports a GPU."""
    return "gpu" if gpus > 0 else "cpu"


def gpu_retrieval_p99_ms(embeddings: np.ndarray, *, gpus: int, k: int = 100) -> float | None:
    """p99 of single-query IVF search on GPU 0; None (not measured) without a GPU."""
    if retrieval_device(gpus) != "gpu":
        return None
    from rtrec.training.index import build_index

    index = build_index(embeddings, kind="ivf", use_gpu=True, k=k)
    rng = np.random.default_rng(1)
    queries = embeddings[rng.choice(len(embeddings), 2000)]
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - t)
    return float(np.percentile(np.asarray(times[100:]) * 1000, 99))


def get_bundle(args: argparse.Namespace) -> Path:
    if args.bundle:
        return Path(args.bundle)
    from rtrec.serving.synthetic import synthetic_bundle
    from rtrec.training import METADATA

    path = Path(args.workdir) / f"bundle-{args.items}x{args.dim}-u{args.users}"
    if (path / METADATA).exists():
        print(f"reusing bundle {path}", flush=True)
        return path
    print(f"building a {args.items}-item bundle in {path} (one-off)...", flush=True)
    t = time.perf_counter()
    synthetic_bundle(path, n_items=args.items, n_users=args.users, dim=args.dim, seed=7)
    print(f"  built in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def bare_retrieval(bundle, histories: dict[str, list[str]], n: int = 3000) -> dict[str, float]:
    """User tower + FAISS search (with the service's over-fetch), one request at a time."""
    import torch

    torch.set_num_threads(1)
    users = list(histories)
    zeros = np.zeros((1, len(bundle.dense_names)), np.float32)
    times = []
    for j in range(n):
        user = users[j % len(users)]
        hist = histories[user]
        t = time.perf_counter()
        vec = bundle.user_vectors([user], [hist], zeros)
        bundle.search(vec, 10 + len(hist) + 20)
        times.append(time.perf_counter() - t)
    arr = np.asarray(times[200:]) * 1000
    return {
        "bare_p50_ms": float(np.percentile(arr, 50)),
        "bare_p99_ms": float(np.percentile(arr, 99)),
    }


def seed_histories(
    settings, item_ids: list[str], users: list[str], seed: int
) -> dict[str, list[str]]:
    import pandas as pd
    from rtrec.features import count_names, write_user_features

    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    hist = {u: [item_ids[i] for i in rng.choice(len(item_ids), rng.integers(5, 21))] for u in users}
    rows = [
        {"user_id": u, "recent_items": h, "last_event_ms": now - 60_000, "written_ms": now}
        | {c: int(rng.integers(0, 20)) for c in count_names()}
        for u, h in hist.items()
    ]
    frame = pd.DataFrame(rows)
    frame["event_timestamp"] = pd.to_datetime(frame["last_event_ms"], unit="ms", utc=True)
    for start in range(0, len(frame), 1000):
        write_user_features(settings, frame.iloc[start : start + 1000])
    return hist


def click_to_change(url: str, users: list[str], *, timeout_s: float = 10.0) -> list[float]:
    """ms from posting a click until that user's recommendations change (timeout counts)."""
    import httpx

    def one(user: str) -> float:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=5) as c:
            first = c.post("/recommend", json={"user_id": user}).json()["items"]
            ids = [i["item_id"] for i in first]
            event = {"user_id": user, "item_id": ids[0], "event_type": "click"}
            event["ts"] = int(time.time() * 1000)
            t = time.perf_counter()
            assert c.post("/feedback", json={"events": [event]}).status_code == 202
            while time.perf_counter() - t < timeout_s:
                now = [
                    i["item_id"]
                    for i in c.post("/recommend", json={"user_id": user}).json()["items"]
                ]
                if now != ids:
                    return (time.perf_counter() - t) * 1000
                time.sleep(0.005)
            return timeout_s * 1000

    with ThreadPoolExecutor(10) as pool:
        return list(pool.map(one, users))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--users", type=int, default=5000, help="users in the model's vocabulary")
    ap.add_argument("--bundle", default=None, help="serve this bundle (e.g. the ML-100K model)")
    ap.add_argument("--rates", default="100,200,300,400,500,600,800")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--click-users", type=int, default=100)
    ap.add_argument("--workdir", default="/tmp/rtrec-bench-serving")
    ap.add_argument(
        "--gpu-large-items",
        type=int,
        default=10_000_000,
        help="where a GPU is present, also time GPU retrieval over this many items (0: skip)",
    )
    args = ap.parse_args()

    from rtrec.serving.loadgen import run_rate
    from rtrec.serving.process import running_server
    from rtrec.training.artifacts import load_bundle
    from rtrec.training.index import gpu_count

    from rtrec.app.stack import down, up
    from rtrec.logging import configure_logging

    configure_logging("WARNING", json_lines=False)
    bundle_dir = get_bundle(args)
    settings = fresh_stack_settings(Path(args.workdir) / "work")
    bundle = load_bundle(bundle_dir, use_gpu=False)
    items, users = bundle.item_ids, bundle.encoders.users.ids
    click_users = users[-args.click_users :]
    hist_users = users[: max(1, len(users) - args.click_users)]
    out: dict[str, object] = {"catalog_items": len(items), "index": bundle.index.kind}
    try:
        up(settings)
        from rtrec.features import apply

        apply(settings)
        histories = seed_histories(settings, items, hist_users, seed=3)
        print("bare retrieval (user tower + FAISS, no HTTP)...", flush=True)
        out.update({k: round(v, 3) for k, v in bare_retrieval(bundle, histories).items()})
        print(f"  {out}", flush=True)
        gpus = gpu_count()
        gpu_p99 = gpu_retrieval_p99_ms(bundle.item_embeddings, gpus=gpus)
        gpu_p99_large = None
        if retrieval_device(gpus) == "gpu" and args.gpu_large_items:
            from rtrec.serving.synthetic import clustered_vectors

            print(f"GPU retrieval over {args.gpu_large_items} items...", flush=True)
            large = clustered_vectors(args.gpu_large_items, args.dim, seed=5)
            gpu_p99_large = gpu_retrieval_p99_ms(large, gpus=gpus)
            del large
        del bundle
        gc.collect()  # then keep the client's own collector off the big heap it left
        gc.freeze()
        start_stream_processor(settings, "stream-bench")
        env = service_env(bundle_dir, KEY)
        with running_server(
            free_port(), env=env, log=settings.log_dir / "serving-bench.log", timeout=300
        ) as srv:
            rng = np.random.default_rng(11)
            picks = rng.choice(len(hist_users), 1_000_000)
            bodies = [
                json.dumps({"user_id": hist_users[p], "k": 10}).encode() for p in picks[:100_000]
            ]

            def body_for(i: int) -> bytes:
                return bodies[i % len(bodies)]

            hdr = {"X-API-Key": KEY}
            run_rate(
                srv.url, "/recommend", body_for, rate=100, duration_s=3, headers=hdr
            )  # warm-up
            rows, best = [], None
            for rate in (float(r) for r in args.rates.split(",")):
                tally = Tally()
                res = run_rate(
                    srv.url,
                    "/recommend",
                    body_for,
                    rate=rate,
                    duration_s=args.duration,
                    connections=args.connections,
                    headers=hdr,
                    on_response=tally,
                )
                row = res.row() | {
                    "fallbacks": tally.fallbacks,
                    "server_p99_ms": round(float(np.percentile(tally.server_ms, 99)), 3),
                }
                rows.append(row)
                print(f"  {json.dumps(row)}", flush=True)
                if res.p99_ms <= TARGET_MS and res.errors == 0:
                    best = rate
                elif rate > 200:
                    break
            at200 = next((r for r in rows if r["rate_rps"] == 200), rows[0])
            print(f"click-to-change over {len(click_users)} users...", flush=True)
            ctc = np.asarray(click_to_change(srv.url, click_users))
        out.update(
            rate_rps=at200["rate_rps"],
            p50_ms=at200["p50_ms"],
            p95_ms=at200["p95_ms"],
            p99_ms=at200["p99_ms"],
            errors=at200["errors"],
            fallbacks=at200["fallbacks"],
            server_p99_ms=at200["server_p99_ms"],
            max_rps_p99_under_10ms=best,
            click_to_change_p50_ms=round(float(np.percentile(ctc, 50)), 1),
            click_to_change_p99_ms=round(float(np.percentile(ctc, 99)), 1),
            click_to_change_timeouts=int((ctc >= 10_000).sum()),
            gpu_retrieval_p99_ms=gpu_p99,
            gpu_retrieval_large_items=args.gpu_large_items if gpu_p99_large else None,
            gpu_retrieval_large_p99_ms=gpu_p99_large,
            rates=rows,
        )
    finally:
        down(settings)
    out["service_overhead_ratio_p99"] = round(out["p99_ms"] / max(out["bare_p99_ms"], 1e-9), 2)
    gc.unfreeze()  # let interpreter teardown free everything (no leak notices after the JSON)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
