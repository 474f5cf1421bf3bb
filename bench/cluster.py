"""Beyond one process: processor replicas, the rebalance, and Spark local vs standalone.

    python bench/cluster.py                      # every phase
    python bench/cluster.py --events 40000 --skip-spark

Starts its own embedded stack (Tansu + Redis, free ports, a fresh work dir) and measures,
in one run (phases in :mod:`bench.cluster_stream`):

- ``events_per_s_one`` / ``events_per_s_two``: the synthetic events preloaded, drained by
  one and then by two ``rtrec stream run`` replicas of one consumer group;
- ``rebalance_gap_p99_ms``: two replicas on a live stream, one SIGKILLed half way; the p99
  delay (acknowledged send -> offset applied) of the events sent in the 5 s after the
  kill, beside ``delay_p99_ms_before_kill``; ``lost_events`` and
  ``double_counted_events``: the online per-user counts against the events sent;
- ``spark_local_s`` / ``spark_cluster_s``: the point-in-time training-set job over the
  same event log on ``local[*]`` and on a Spark standalone master with two one-core
  workers started here (``rtrec.app.cluster.start_spark``), session start-up apart
  (``*_session_s``), with the application id and executor count.

Serving through nginx (``p99_ms_two_replicas`` / ``p99_ms_direct``) and the cluster demo's
``loop_seconds`` are not measured here yet; the output says so (``not_measured``). On two
cores scaling figures may not rise: the load average is reported with them. The last line
of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cluster_stream as cs
from bench._common import free_port, fresh_stack_settings


def spark_phase(settings: Any, data: Any, master: str) -> dict[str, Any]:
    """The training-set job on ``master``; session start and job timed apart."""
    from rtrec.training.dataset import (
        build_training_sets,
        spark_session,
        stop_spark,
        write_event_log,
    )

    from rtrec.config import load_settings

    name = "local" if master.startswith("local") else "cluster"
    s = load_settings(
        work_dir=settings.work_dir / f"spark-{name}",
        spark={"master": master, "driver_memory": "1g"},
    )
    source = write_event_log(data, s.work_dir / "log")
    t0 = time.perf_counter()
    spark = spark_session(s)
    t1 = time.perf_counter()
    sets = build_training_sets(s, source=source, out_dir=s.work_dir / "sets")
    t2 = time.perf_counter()
    sc = spark.sparkContext
    executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # the driver is listed
    app = sc.applicationId
    stop_spark()
    rows = sum(sets.counts.values())
    return {
        f"spark_{name}_session_s": round(t1 - t0, 2),
        f"spark_{name}_s": round(t2 - t1, 2),
        f"spark_{name}_app": app,
        f"spark_{name}_executors": executors,
        f"spark_{name}_rows": rows,
    }


def standalone(settings: Any, workers: int) -> tuple[Any, str]:
    """A Spark standalone master and ``workers`` one-core workers on free ports."""
    from rtrec.app import cluster
    from rtrec.config import load_settings

    master = f"spark://127.0.0.1:{free_port()}"
    s = load_settings(
        work_dir=settings.work_dir / "spark-standalone",
        spark={"master": master},
        cluster={"spark": {"ui_port": free_port(), "workers": workers, "worker_cores": 1}},
    )
    cluster.start_spark(s)
    return s, master


def stop_standalone(s: Any) -> None:
    from rtrec.app import stack

    for name in sorted(n for n in stack.managed_names(s) if n.startswith("spark-worker-")):
        stack.stop_managed(s, name)
    stack.stop_managed(s, "spark-master")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="synthetic events per phase")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--rate", type=float, default=4000.0, help="events/s offered in the kill")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--workdir", default="/tmp/rtrec-bench-cluster")
    ap.add_argument("--skip-spark", action="store_true")
    args = ap.parse_args()

    from rtrec.app.stack import down, up

    settings = fresh_stack_settings(Path(args.workdir))
    data = cs.squeezed_events(args.events, args.seed)
    out: dict[str, Any] = {"events": len(data.events), "partitions": args.partitions}
    out["load_avg_1m_before"] = round(os.getloadavg()[0], 2)
    try:
        up(settings)
        for n, key in ((1, "one"), (2, "two")):
            print(f"drain with {n} replica(s)...", flush=True)
            row = cs.drain_rate(settings, data, n, args.partitions)
            print(f"  {row}", flush=True)
            out[f"events_per_s_{key}"] = row["events_per_s"]
            out[f"drain_{key}"] = row
        print("two replicas, one SIGKILLed mid-stream...", flush=True)
        kill = cs.kill_one(settings, data, args.partitions, args.rate)
        print(f"  {kill}", flush=True)
        out.update(kill_phase=kill, **{k: kill[k] for k in cs.KILL_KEYS})
    finally:
        down(settings)
    if not args.skip_spark:
        print("training-set job on local[*]...", flush=True)
        out.update(spark_phase(settings, data, "local[*]"))
        print("training-set job on a standalone master, two workers...", flush=True)
        s, master = standalone(settings, workers=2)
        try:
            out.update(spark_phase(settings, data, master))
        finally:
            stop_standalone(s)
    out["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    out["not_measured"] = ["p99_ms_two_replicas", "p99_ms_direct", "loop_seconds"]
    shutil.rmtree(args.workdir, ignore_errors=True)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
