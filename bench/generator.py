"""Synthetic generator throughput: generate N events, then serialise them to wire JSON.

Usage: python bench/generator.py [--events 1000000] [--seed 42] [--shift] [--repeats 3]

Last line: {"events": N, "seconds": ..., "events_per_s": ..., ...} (best of the repeats).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--shift", action="store_true", help="include a ShiftConfig()")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from rtrec.data import ShiftConfig, SyntheticConfig, generate

    cfg = SyntheticConfig(
        seed=args.seed, n_events=args.events, shift=ShiftConfig() if args.shift else None
    )
    gen_times = []
    for i in range(max(1, args.repeats)):
        t0 = time.perf_counter()
        ds = generate(cfg)
        gen_times.append(time.perf_counter() - t0)
        print(f"run {i + 1}/{args.repeats}: generated {len(ds.events):,} in {gen_times[-1]:.2f} s")
    t0 = time.perf_counter()
    n_json = sum(1 for _ in ds.iter_event_json())
    json_s = time.perf_counter() - t0
    print(f"serialised {n_json:,} events to wire JSON in {json_s:.2f} s")
    summary = ds.summary()
    best = min(gen_times)
    figures = {
        "events": len(ds.events),
        "seconds": round(best, 3),
        "events_per_s": round(len(ds.events) / best),
        "seconds_all_runs": [round(t, 3) for t in gen_times],
        "json_events_per_s": round(n_json / json_s),
        "users": summary["n_users"],
        "items": summary["n_items"],
        "top1pct_item_share": summary["top1pct_item_share"],
        "shift": args.shift,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
