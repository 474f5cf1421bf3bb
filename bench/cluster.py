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

- ``loop_seconds`` (``--loop``): ``rtrec demo --profile cluster --quick`` run as a user
  runs it, in a fresh work dir with free ports; the demo's own clock from bringing the
  profile up to both replicas serving the drift-retrained model, with each step's seconds
  and each scheduled run's split (:mod:`bench.cluster_loop`). ``--loop-from FILE`` reads
  the same figures from a saved output of that command instead of running it.

- ``p99_ms_two_replicas`` / ``p99_ms_direct`` (``--serving``): ``bench/cluster_serving.py``
  run as a child process (it brings the profile up in its own work dir, with its own
  environment): open-loop ``/recommend`` at ``--serving-rate`` through nginx over two
  replicas, and straight to one replica.

A figure whose phase was not asked for is listed in ``not_measured``. On two cores
scaling figures may not rise: the load average is reported with them. The last line of
output is one JSON object.
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

from bench import cluster_loop
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
    ap.add_argument("--skip-stream", action="store_true", help="no processor phases")
    ap.add_argument("--loop", action="store_true", help="run the cluster demo (--quick)")
    ap.add_argument("--loop-from", type=Path, help="read the cluster demo's saved output")
    ap.add_argument("--serving", action="store_true", help="serving through nginx vs direct")
    ap.add_argument("--serving-rate", type=float, default=200.0)
    args = ap.parse_args()

    settings = fresh_stack_settings(Path(args.workdir))
    phases = not (args.skip_stream and args.skip_spark)
    data = cs.squeezed_events(args.events, args.seed) if phases else None
    out: dict[str, Any] = {"partitions": args.partitions}
    out["events"] = len(data.events) if data is not None else 0
    out["load_avg_1m_before"] = round(os.getloadavg()[0], 2)
    if not args.skip_stream:
        out.update(stream_phases(settings, data, args))
    if not args.skip_spark:
        out.update(spark_phases(settings, data))
    out.update(loop_phase(args))
    out.update(serving_phase(args))
    out["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    wanted = ("p99_ms_two_replicas", "p99_ms_direct", "loop_seconds")
    out["not_measured"] = [k for k in wanted if out.get(k) is None]
    shutil.rmtree(args.workdir, ignore_errors=True)
    print(json.dumps(out), flush=True)


def stream_phases(settings: Any, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Drain rates with one and two processors, then the SIGKILL phase."""
    from rtrec.app.stack import down, up

    out: dict[str, Any] = {}
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
    return out


def spark_phases(settings: Any, data: Any) -> dict[str, Any]:
    """The training-set job on local[*], then on a standalone master with two workers."""
    print("training-set job on local[*]...", flush=True)
    out = spark_phase(settings, data, "local[*]")
    print("training-set job on a standalone master, two workers...", flush=True)
    s, master = standalone(settings, workers=2)
    try:
        out.update(spark_phase(settings, data, master))
    finally:
        stop_standalone(s)
    return out


def loop_phase(args: argparse.Namespace) -> dict[str, Any]:
    """The cluster demo's loop: run now (``--loop``) or read from a saved run."""
    if args.loop_from is not None:
        summary = cluster_loop.read_loop(args.loop_from)
        return {"loop_source": str(args.loop_from), **cluster_loop.loop_figures(summary)}
    if not args.loop:
        return {}
    print("rtrec demo --profile cluster --quick...", flush=True)
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)  # PostgreSQL, run as its own account, must enter the work dir
    log = root.with_name(f"{root.name}-demo.log")  # kept: the work dir is removed at the end
    ran = cluster_loop.run_loop(root / "loop", log)
    print(f"  exit {ran['exit_code']} in {ran['command_s']} s; log {ran['log']}", flush=True)
    figures = cluster_loop.loop_figures(ran)
    keep = {k: ran[k] for k in ("command_s", "exit_code", "log")}
    return {"loop_source": "rtrec demo --profile cluster --quick", **keep, **figures}


def serving_phase(args: argparse.Namespace) -> dict[str, Any]:
    """``bench/cluster_serving.py`` in a child process; its figures under their names."""
    import subprocess

    if not args.serving:
        return {}
    print(f"serving at {args.serving_rate:g} req/s through nginx and direct...", flush=True)
    script = Path(__file__).with_name("cluster_serving.py")
    cmd = [sys.executable, str(script), "--rate", str(args.serving_rate)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout)[-2000:]
        raise SystemExit(f"bench/cluster_serving.py failed (exit {done.returncode}):\n{tail}")
    result = json.loads(lines[-1])
    direct, two = result["p99_ms_direct"], result["p99_ms_two_replicas"]
    print(f"  p99 direct {direct} ms, through nginx over two replicas {two} ms", flush=True)
    return {
        "p99_ms_two_replicas": two,
        "p99_ms_direct": direct,
        "serving_phase": result,
    }


if __name__ == "__main__":
    main()
