"""Serving latency over real HTTP, the bare retrieval path, and click-to-change time.

    python bench/serving.py [--items 1000000] [--rates 50,100,200,300,400] [--seconds 10]

Builds a synthetic catalog of ``--items`` 64-d clustered item vectors behind an IVF index
(nprobe tuned to recall@100 >= 0.95) with a two-tower user tower, starts its own embedded
stack, a stream processor and the BentoML service, and drives /recommend with an
open-loop load generator (keep-alive connections, requests scheduled at a fixed rate;
latency counted from the scheduled time so queueing is not hidden). In the same run:
the bare retrieval latency (user tower + FAISS, no HTTP), and click-to-change: a click
posted to /feedback until that user's recommendations change (100 users).
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_bundle(out: Path, n_items: int, dim: int = 64, seed: int = 0) -> Path:
    """A real bundle (towers, encoders, FAISS index) over a synthetic ``n_items`` catalog."""
    from training.artifacts import save_bundle
    from training.examples import Encoders
    from training.index import build_index
    from training.model import TwoTower, TwoTowerConfig
    from training.trainer import TrainConfig, TrainedModel
    from training.vocab import Vocab

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(1024, dim)).astype(np.float32)
    emb = centers[rng.integers(0, 1024, n_items)] + 0.35 * rng.normal(size=(n_items, dim)).astype(
        np.float32
    )
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    items = Vocab([f"i{j}" for j in range(n_items)])
    users = Vocab([f"u{j}" for j in range(1000)])
    dense = [
        f"cnt_{t}_{w}"
        for t in ("view", "click", "add_to_cart", "purchase", "rating")
        for w in ("1h", "24h", "7d")
    ]
    enc = Encoders(
        users, items, Vocab(["c0"]), sorted(dense), 20, np.zeros((items.size, 1), np.int64)
    )
    net = TwoTower(
        TwoTowerConfig(
            n_users=users.size,
            n_items=items.size,
            n_categories=2,
            n_dense=len(dense),
            dim=dim,
            max_item_categories=1,
        )
    ).eval()
    model = TrainedModel(net, enc, TrainConfig(dim=dim))
    model.item_embeddings = lambda: emb  # the catalog's vectors stand in for the item tower
    index = build_index(emb, use_gpu=False)
    print(
        f"index {index.kind} nprobe={index.nprobe} recall@100={index.recall:.3f}", file=sys.stderr
    )
    return save_bundle(out, model=model, index=index, popular_items=[f"i{j}" for j in range(500)])


async def load(base: str, users: list[str], rate: float, seconds: float, conns: int) -> dict:
    import httpx

    n = int(rate * seconds)
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=5) as client:
        start = time.perf_counter() + 0.2

        async def one(i: int) -> None:
            nonlocal errors
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                r = await client.post(
                    "/recommend", json={"user_id": users[i % len(users)], "k": 10}
                )
                if r.status_code != 200 or r.json()["fallback"]:
                    errors += 1
            except Exception:
                errors += 1
            lat.append((time.perf_counter() - due) * 1000)

        await asyncio.gather(*(one(i) for i in range(n)))
    arr = np.array(lat)
    return {
        "rate_rps": rate,
        "requests": n,
        "errors": errors,
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
    }


def click_to_change(base: str, users: list[str], catalog_ts: int) -> list[float]:
    import httpx

    out = []
    with httpx.Client(base_url=base, timeout=5) as c:
        for u in users:
            before = [
                i["item_id"]
                for i in c.post("/recommend", json={"user_id": u, "k": 10}).json()["items"]
            ]
            t = time.perf_counter()
            c.post(
                "/feedback",
                json={
                    "events": [
                        {
                            "user_id": u,
                            "item_id": before[0],
                            "event_type": "click",
                            "ts": catalog_ts,
                        }
                    ]
                },
            )
            while time.perf_counter() - t < 5:
                now = [
                    i["item_id"]
                    for i in c.post("/recommend", json={"user_id": u, "k": 10}).json()["items"]
                ]
                if now != before:
                    break
                time.sleep(0.005)
            out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--rates", default="50,100,200,300,400")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()

    import pandas as pd

    from features import apply, count_names, write_user_features
    from rtrec import stack
    from rtrec.config import load_settings
    from serving.cli import start_detached

    work = Path(tempfile.mkdtemp(prefix="rtrec-bench-serving-"))
    bundle_dir = synthetic_bundle(work / "bundle", args.items)
    env = {
        "RTREC_WORK_DIR": str(work),
        "RTREC_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "RTREC_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "RTREC_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0",
        "RTREC_SERVING__PORT": str(free_port()),
        "RTREC_SERVING__BUNDLE_PATH": str(bundle_dir),
        "RTREC_SERVING__RATE_LIMIT_PER_S": "100000",
    }
    os.environ.update(env)
    settings = load_settings()
    stack.up(settings)
    processor = None
    try:
        apply(settings)
        rng = np.random.default_rng(1)
        users = [f"u{j}" for j in range(1000)]
        now_ms = int(time.time() * 1000)
        rows = [
            {
                "user_id": u,
                "recent_items": [f"i{x}" for x in rng.integers(0, args.items, 20)],
                **{c: int(rng.integers(0, 20)) for c in count_names()},
                "last_event_ms": now_ms - 60_000,
                "written_ms": now_ms,
            }
            for u in users
        ]
        frame = pd.DataFrame(rows)
        frame["event_timestamp"] = pd.to_datetime(frame["last_event_ms"], unit="ms", utc=True)
        write_user_features(settings, frame)

        # Bare retrieval: user tower + FAISS in this process, no HTTP.
        from features import online_features
        from serving.retrieval import dense_row
        from training.artifacts import load_bundle

        bundle = load_bundle(bundle_dir)
        import torch

        torch.set_num_threads(1)
        bare = []
        for u in users[:500]:
            f = online_features(settings, [u])[0]
            t = time.perf_counter()
            vec = bundle.user_vectors(
                [u], [f["recent_items"]], dense_row(f, bundle.dense_names, now_ms)
            )
            bundle.search(vec, 60)
            bare.append((time.perf_counter() - t) * 1000)
        del bundle

        processor = subprocess.Popen(
            [sys.executable, "-m", "rtrec.cli", "stream", "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        start_detached(settings, timeout=300)
        base = f"http://{settings.serving.host}:{settings.serving.port}"
        asyncio.run(load(base, users, 50, 3, args.connections))  # warm-up
        results = []
        for rate in [float(r) for r in args.rates.split(",")]:
            res = asyncio.run(load(base, users, rate, args.seconds, args.connections))
            print(json.dumps(res), file=sys.stderr)
            results.append(res)
        c2c = click_to_change(base, users[:100], now_ms)
    finally:
        if processor is not None:
            processor.terminate()
            processor.wait(timeout=30)
        stack.down(settings)
    at200 = next((r for r in results if r["rate_rps"] == 200), results[0])
    ok = [r["rate_rps"] for r in results if r["p99_ms"] <= 10 and r["errors"] == 0]
    out = {
        "catalog_items": args.items,
        "rate_rps": at200["rate_rps"],
        "p50_ms": at200["p50_ms"],
        "p95_ms": at200["p95_ms"],
        "p99_ms": at200["p99_ms"],
        "errors": at200["errors"],
        "max_rps_p99_under_10ms": max(ok) if ok else None,
        "bare_p50_ms": round(float(np.percentile(bare, 50)), 3),
        "bare_p99_ms": round(float(np.percentile(bare, 99)), 3),
        "click_to_change_p50_ms": round(float(np.percentile(c2c, 50)), 1),
        "click_to_change_p99_ms": round(float(np.percentile(c2c, 99)), 1),
        "gpu_retrieval_p99_ms": None,
        "per_rate": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
