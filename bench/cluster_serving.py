"""Serving p99 through nginx with two replicas against one replica direct, on the cluster
profile; and where ``rtrec up --profile cluster``'s time goes.

Brings the profile up in a fresh work dir with free ports (each phase of ``up`` timed, in
``up``'s own order), the replicas serving a synthetic bundle, seeds user histories into
the Redis Cluster, then offers the same open-loop ``/recommend`` load (``--rate`` for
``--seconds``, :func:`rtrec.serving.loadreport.run_rate`) twice: straight to replica 1's
own port, then through nginx, which spreads it over both (``--rounds`` pairs, alternated;
the best p99 of each is reported, every run is in the JSON). Brings everything down at the
end. The last line of output is one JSON object; the machine's load average is in it,
since on a shared 2-core machine the replicas, nginx and the load generator share cores.

    .venv/bin/python bench/cluster_serving.py --rate 200 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cluster_loop
from bench._common import seed_histories

KEY = "bench-" + os.urandom(12).hex()


def profile_env(work: Path, bundle: Path) -> dict[str, str]:
    """The profile's free ports and work dir (:func:`bench.cluster_loop.profile_env`), its
    replicas pinned to ``bundle``, one key with no practical rate limit."""
    return {
        **cluster_loop.profile_env(work),
        "RTREC_SERVING__BUNDLE_PATH": str(bundle),
        "RTREC_SERVING__API_KEYS": json.dumps([KEY]),
        "RTREC_SERVING__RATE_LIMIT_PER_S": "1000000",
    }


def timed_up(settings: Any) -> dict[str, float]:
    """``rtrec.app.cluster.up``'s steps, in its order, each timed (seconds)."""
    from rtrec.features import apply

    from rtrec.app import (
        cluster,
        cluster_postgres,
        cluster_redis,
        cluster_serving,
        cluster_stream,
        stack,
    )

    phases: dict[str, float] = {}

    def step(name: str, *calls: Any) -> None:
        started = time.monotonic()
        for call in calls:
            call(settings)
        phases[name] = round(time.monotonic() - started, 1)

    cluster.check_profile(settings)
    step("kafka", stack.make_dirs, stack.start_kafka, stack.ensure_topics)
    step("redis_cluster", cluster_redis.start)
    step("postgres", cluster_postgres.start)

    def engines(s: Any) -> None:
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(cluster.start_mlflow, s), pool.submit(cluster.start_spark, s)]:
                f.result()

    def replicas(s: Any) -> None:
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(m.start, s) for m in (cluster_stream, cluster_serving)]:
                f.result()

    step("mlflow_and_spark", engines)
    step("feast_apply", apply)
    step("processors_replicas_nginx", replicas)
    phases["total"] = round(sum(phases.values()), 1)
    return phases


def measure(url: str, users: list[str], rate: float, seconds: float) -> dict[str, Any]:
    from rtrec.serving.loadreport import run_rate

    def body(i: int) -> bytes:
        return json.dumps({"user_id": users[i % len(users)], "k": 10}).encode()

    run_rate(url, "/recommend", body, rate=rate, duration_s=3, headers={"X-API-Key": KEY})
    out = run_rate(
        url, "/recommend", body, rate=rate, duration_s=seconds, headers={"X-API-Key": KEY}
    )
    return {**out.row(), "statuses": out.statuses}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2, help="direct/nginx pairs, alternated")
    args = ap.parse_args(argv)

    from rtrec.serving.synthetic import synthetic_bundle

    from rtrec.app import cluster
    from rtrec.config import get_settings

    work = Path(tempfile.mkdtemp(prefix="rtrec-bench-cluster-"))
    os.chmod(work, 0o711)  # PostgreSQL runs as its own account under root
    bundle = synthetic_bundle(work / "bundle", n_items=400, seed=1)
    os.environ.update(profile_env(work, bundle))
    get_settings.cache_clear()
    settings = get_settings()
    try:
        phases = timed_up(settings)
        print(f"up phases (s): {phases}", flush=True)
        users = [f"u{n}" for n in range(500)]
        seed_histories(
            settings, {u: [f"i{(n * 7 + j) % 400}" for j in range(20)] for n, u in enumerate(users)}
        )
        urls = {
            "direct": f"http://127.0.0.1:{settings.cluster.serving.replica_ports[0]}",
            "two_replicas": f"http://{settings.serving.host}:{settings.serving.port}",
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
        for _ in range(args.rounds):  # alternated: a busy spell hits both, not one
            for name, url in urls.items():
                runs[name].append(measure(url, users, args.rate, args.seconds))
                print(f"{name}: {runs[name][-1]}", flush=True)
    finally:
        cluster.down(settings)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "rate": args.rate,
        "seconds": args.seconds,
        "up_phases_s": phases,
        "p99_ms_direct": min(r["p99_ms"] for r in runs["direct"]),
        "p99_ms_two_replicas": min(r["p99_ms"] for r in runs["two_replicas"]),
        "runs": runs,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
