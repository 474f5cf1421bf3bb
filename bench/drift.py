"""Drift monitoring: detection delay, false alarms, and shift -> new champion.

    python bench/drift.py [--seeds 3] [--interval-hours 6] [--no-e2e] [--work-dir DIR]

Per seed, a synthetic stream (``SyntheticConfig.small``, ``--days`` long) gets a shift
(popularity shift, new items, taste drift: the generator's defaults) at a random phase
of the monitor's schedule, ``--shift-day`` days in. A champion is trained once on the
first ``--train-days`` of seed 0 (the real pipeline: Spark, two-tower, MLflow), and every
check scores both windows with it, as the scheduled DAG does. Figures:

- ``detected_after_runs``: worst case over seeds of the number of scheduled monitor runs
  after the shift until the verdict drifts (run 1 = the first run after the shift);
- ``false_alarm_rate``: drifted verdicts / checks over every scheduled run whose windows
  lie wholly before the shift and after the champion's training data;
- ``shift_to_new_champion_s``: seed 0, from the shift to a new champion: the schedule's
  wait until the detecting run (data time, which is wall time in production) plus the
  measured wall time of the detecting check and the ``rtrec_training`` steps (training
  set, two-tower, register, index, gate) until the ``champion`` alias moved. Serving
  swaps within ``serving.watch_interval_s`` after that (not included).

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

DAY = 86_400_000
HOUR = 3_600_000


def dataset(seed: int, days: float, n_events: int, shift_at: int | None):
    from rtrec.data import ShiftConfig, SyntheticConfig, generate

    cfg = SyntheticConfig.small(seed=seed, days=days, n_events=n_events)
    if shift_at is not None:
        cfg = cfg.model_copy(update={"shift": ShiftConfig(at_ts=cfg.start_ts + shift_at)})
    return generate(cfg), cfg.start_ts


def one_check(settings, ds, now: int, bundle, cfg) -> Any:
    """The scheduled check as of ``now``, on the events logged by then (what the offline
    log would hold), scored by ``bundle`` when there is one; nothing recorded or alerted."""
    from rtrec.monitoring import monitor_offline_log

    return monitor_offline_log(
        settings,
        events=ds.events[ds.events["ts"] < now],
        items=ds.items,
        now_ms=now,
        scores=bundle is not None,
        bundle=bundle,
        record=False,
        alert=False,
        config=cfg,
    )


def train_champion(settings, ds, start: int, train_days: float, epochs: int) -> Any:
    """The pre-shift champion: the real pipeline on the first ``train_days``."""
    from rtrec.training import load_champion, train

    path = ds.time_slice(None, start + int(train_days * DAY)).save(settings.work_dir / "pre")
    res = train(settings, data=path, epochs=epochs, progress=False)
    print(f"champion v{res.version}: gate ndcg@10 {res.gate_value:.4f}", flush=True)
    champion = load_champion(settings, use_gpu=False)
    if champion is None:  # the first model has no champion to beat: train() promotes it
        raise RuntimeError(f"training v{res.version} left no champion to monitor with")
    return champion[1]


def write_offline_log(settings, events: pd.DataFrame, items, users) -> None:
    """The stream processor's offline log and catalog, as if these events had streamed."""
    from rtrec.features import write_offline_metadata
    from rtrec.streaming import write_events

    write_events(settings.events_log_dir, events.assign(value=1.0), partition=0)
    write_offline_metadata(settings, items, users)


def retrain_after(settings, ds, now: int, epochs: int) -> dict[str, Any]:
    """The detecting check and ``rtrec_training``'s steps, in process, timed."""
    from rtrec.dags.steps import run_step

    write_offline_log(settings, ds.events[ds.events["ts"] < now], ds.items, ds.users)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str, **args: Any) -> dict[str, Any]:
        t = time.perf_counter()
        out = run_step(name, args, settings=settings)
        timings[name] = round(time.perf_counter() - t, 2)
        return out

    verdict = step("drift_check", now_ms=now, alert=False)
    sets = step("build_training_set")
    fit = step("train_two_tower", training_sets=sets["root"], epochs=epochs)
    reg = step("evaluate_and_register", fit=fit, reason=verdict["reason"])
    decision = step("promote", version=reg["version"], fit=fit)
    return {
        "drifted": verdict["drifted"],
        "pipeline_s": round(time.perf_counter() - started, 2),
        "timings_s": timings,
        "promoted": decision["promoted"],
        "reason": decision["reason"],
        "version": reg["version"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--days", type=float, default=48.0)
    ap.add_argument("--n-events", type=int, default=160_000)
    ap.add_argument("--shift-day", type=float, default=42.0)
    ap.add_argument("--train-days", type=float, default=14.0)
    ap.add_argument("--interval-hours", type=float, default=6.0, help="monitor schedule")
    ap.add_argument("--window-days", type=float, default=1.0)
    ap.add_argument("--reference-days", type=float, default=7.0)
    ap.add_argument("--max-runs", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--no-model", action="store_true", help="features and outcome only")
    ap.add_argument("--no-e2e", action="store_true", help="skip the retrain measurement")
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args()

    from rtrec.monitoring.monitor import MonitorConfig

    from rtrec.config import load_settings

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rtrec-bench-drift-"))
    settings = load_settings(work_dir=work)
    settings.spark.master, settings.spark.driver_memory = "local[2]", "1g"
    settings.monitoring.offline_coverage = "unchecked"  # the log is written here, not streamed
    cfg = MonitorConfig(reference_days=args.reference_days, window_days=args.window_days)
    interval = int(args.interval_hours * HOUR)
    rng = np.random.default_rng(0)
    bundle = None
    checks = alarms = 0
    detected: list[int | None] = []
    e2e: dict[str, Any] | None = None
    t_all = time.perf_counter()
    for seed in range(args.seeds):
        shift_at = int(args.shift_day * DAY + rng.uniform(0, interval))
        ds, start = dataset(seed, args.days, args.n_events, shift_at)
        shift = start + shift_at
        if seed == 0 and not args.no_model:
            bundle = train_champion(settings, ds, start, args.train_days, args.epochs)
        # Scheduled runs at start + k * interval; stationary ones have both windows after
        # the champion's training data and before the shift.
        first = start + int((args.train_days + args.reference_days + args.window_days) * DAY)
        runs = np.arange(start, start + int(args.days * DAY), interval)
        for now in runs[(runs >= first) & (runs <= shift)]:
            v = one_check(settings, ds, int(now), bundle, cfg)
            checks += 1
            alarms += v.drifted
            if v.drifted:
                print(f"seed {seed}: false alarm at run {int(now)}: {v.reason}", flush=True)
        after = runs[runs > shift][: args.max_runs]
        hit = None
        for k, now in enumerate(after, start=1):
            v = one_check(settings, ds, int(now), bundle, cfg)
            if v.drifted:
                hit = k
                print(f"seed {seed}: detected at run {k} after the shift: {v.reason}", flush=True)
                break
        detected.append(hit)
        print(f"seed {seed}: {checks} stationary checks so far, {alarms} alarms", flush=True)
        if seed == 0 and hit is not None and bundle is not None and not args.no_e2e:
            now = int(after[hit - 1])
            e2e = retrain_after(settings, ds, now, args.epochs)
            e2e["schedule_wait_s"] = round((now - shift) / 1000, 1)
            print(f"retrain: {e2e}", flush=True)
    worst = None if None in detected or not detected else max(detected)  # type: ignore[type-var]
    new_champion_s = (
        round(e2e["schedule_wait_s"] + e2e["pipeline_s"], 1) if e2e and e2e["promoted"] else None
    )
    result = {
        "detected_after_runs": worst,
        "detected_after_runs_per_seed": detected,
        "false_alarm_rate": alarms / max(checks, 1),
        "stationary_checks": checks,
        "false_alarms": alarms,
        "shift_to_new_champion_s": new_champion_s,
        "retrain_pipeline_s": e2e["pipeline_s"] if e2e else None,
        "retrain_promoted": e2e["promoted"] if e2e else None,
        "retrain_timings_s": e2e["timings_s"] if e2e else None,
        "monitor_interval_h": args.interval_hours,
        "window_days": args.window_days,
        "score_drift": bundle is not None,
        "seeds": args.seeds,
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
