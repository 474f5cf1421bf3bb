"""Serving latency: a real BentoML server, real Redis/Kafka, an open-loop realistic mix.

    python bench/serving.py                          # synthetic 1M items, 64-d
    python bench/serving.py --bundle demo            # the demo's champion (trained)
    python bench/serving.py --bundle PATH/TO/bundle  # any model bundle directory
    python bench/serving.py --items 20000 --duration 2 --rates 50,200 --click-users 3

The model: ``--bundle PATH`` serves that bundle directory (what ``serving.bundle_path``
takes); ``--bundle demo`` the champion the demo's service last loaded, which it keeps at
``<work_dir>/serving/last_good/bundle`` (work dir: ``--demo-work-dir``, by default the
settings' ``RTREC_WORK_DIR`` or ``~/.rtrec``); without ``--bundle``, a synthetic catalog
of ``--items`` items (untrained two-tower, clustered item vectors, IVF index). The output
says which (``model``: ``trained`` or ``synthetic``, as the bundle's metadata says), with
its path, version and number of items.

Steps: start an embedded stack (Tansu + Redis) on free ports, the stream processor and
the service; seed online histories (skewed lengths up to 200); measure bare retrieval
(user tower + FAISS + filters in this process, no HTTP) on the same mix; offer each rate
of /recommend in the mix of :mod:`bench.serving_mix` plus GET /similar at a tenth of it
(open loop, latency from each request's due time); then the click-to-change time: post a
click to /feedback and poll /recommend until that user's list changes.

Per rate and endpoint: p50/p95/p99/p99.9/max, errors by status, fallbacks (cold vs other
reasons), the server's own p99 (``server_ms``), the service process tree's CPU seconds
per answered request, the 1-minute load average before and after. A rate *holds* when
/recommend's p99 is at most the threshold and no request of either endpoint failed;
``max_rps_p99_under_10ms`` (and ``_5ms``) is the largest rate that held with every lower
rate holding too. ``--rates`` must include 200: the headline figures are read there.
``served_stages``: 2 when the served bundle carries a ranker (``--two-stage``, or a
trained bundle with one), else 1 (the default synthetic bundle: retrieval alone; the
ranker figures are then measured in process only, with a synthetic ranker).
``service_overhead_ratio_p99``: /recommend's p99 at 200 req/s over bare retrieval's (the
single-stage answer in process); when the service answers with both stages,
``service_overhead_ratio_two_stage_p99`` sets it beside the same two-stage answer in
process (``two_stage_bare_p99_ms``; null for a single-stage service). ``floor_*``: the
same mix at 200 req/s against the same HTTP stack answering without work
(:mod:`bench.serving_floor`), the ceiling no service built this way beats here;
``floor_overhead_ratio_p99`` is its p99 over bare retrieval's. The last line of output
is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench._common import (
    free_port,
    fresh_stack_settings,
    seed_histories,
    service_env,
    start_stream_processor,
)
from bench.serving_bare import bare_retrieval, gpu_figures, gpu_retrieval_p99_ms, retrieval_device
from bench.serving_mix import Population, bare_plan, category_shares, make_histories, plan_rate
from bench.serving_ranker import ranker_stage
from bench.serving_report import (
    AT_RATE,
    MissingRate,
    Tally,
    TreeCpu,
    headline,
    holds,
    load_avg_1m,
    rate_row,
)

__all__ = ["gpu_retrieval_p99_ms", "main", "retrieval_device"]

KEY = "bench-key"


def demo_bundle(work_dir: Path) -> Path:
    """The champion bundle the demo's service last loaded (its last-good copy)."""
    path = work_dir / "serving" / "last_good" / "bundle"
    from rtrec.training import METADATA

    if (path / METADATA).exists():
        return path
    models = sorted(str(p) for p in (work_dir / "models").glob("*-v*"))
    raise SystemExit(
        f"--bundle demo: no champion bundle at {path} (run `rtrec demo` first, or pass "
        f"--demo-work-dir). Downloaded versions under {work_dir / 'models'}: "
        f"{', '.join(models) or 'none'}; pass one with --bundle PATH"
    )


def last_good_version(bundle_dir: Path) -> str | None:
    """The registry version the service's last-good copy was saved as (its bundle's own
    metadata does not carry one)."""
    meta = bundle_dir.parent / "version.json"
    return str(json.loads(meta.read_text())["version"]) if meta.exists() else None


def resolve_bundle(args: argparse.Namespace) -> Path:
    """The bundle directory to serve: :func:`base_bundle`, with ``--two-stage`` a copy of
    it with a synthetic ranker (built once) unless it carries a ranker already."""
    path = base_bundle(args)
    if not args.two_stage:
        return path
    from rtrec.training import METADATA, add_synthetic_ranker, ranker_declared

    if ranker_declared(json.loads((path / METADATA).read_text())) is not None:
        return path
    if args.bundle:
        raise SystemExit(f"--two-stage: {path} carries no ranker (train one, or drop --bundle)")
    ranked = path.with_name(
        f"{path.name}-ranked-t{args.ranker_trees}-l{args.ranker_leaves}-n{args.ranker_neighbours}"
    )
    if not (ranked / METADATA).exists():
        import shutil

        print(f"adding a synthetic ranker in {ranked} (one-off)...", flush=True)
        shutil.copytree(path, ranked)
        add_synthetic_ranker(
            ranked,
            neighbours=args.ranker_neighbours,
            trees=args.ranker_trees,
            leaves=args.ranker_leaves,
        )
    return ranked


def base_bundle(args: argparse.Namespace) -> Path:
    """The bundle directory to serve, building the synthetic one once."""
    if args.bundle == "demo":
        from rtrec.config import get_settings

        work = Path(args.demo_work_dir) if args.demo_work_dir else get_settings().work_dir
        return demo_bundle(work.expanduser())
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


def population(bundle: Any, click_users: int, seed: int) -> tuple[Population, list[str], dict]:
    """Split the model's users: the last ``click_users`` for click-to-change, 5 % known
    without history (cold), the rest warm with seeded histories."""
    users = list(bundle.encoders.users.ids)
    if len(users) < click_users + 2:
        raise SystemExit(f"the bundle knows {len(users)} users: too few for the mix")
    rest = users[: len(users) - click_users]
    n_cold = max(1, len(rest) // 20)
    categories, weights = category_shares(bundle.item_categories)
    if not categories:
        raise SystemExit("the bundle's items carry no categories: no filtered requests to draw")
    warm = rest[n_cold:]
    histories = make_histories(warm, bundle.item_ids, seed)
    pop = Population(warm, rest[:n_cold], list(bundle.item_ids), categories, weights)
    return pop, users[len(rest) :], histories


def click_to_change(url: str, users: list[str], *, timeout_s: float = 10.0) -> list[float]:
    """Seconds from posting a click until that user's recommendations change (a timeout
    counts as ``timeout_s``)."""
    import httpx

    def one(user: str) -> float:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=5) as c:
            first = c.post("/recommend", json={"user_id": user}).json()["items"]
            ids = [i["item_id"] for i in first]
            event = {"user_id": user, "item_id": ids[0], "event_type": "click"}
            event["ts"] = int(time.time() * 1000)
            t = time.perf_counter()
            status = c.post("/feedback", json={"events": [event]}).status_code
            if status != 202:
                raise RuntimeError(f"/feedback answered {status}, not 202")
            while time.perf_counter() - t < timeout_s:
                now = c.post("/recommend", json={"user_id": user}).json()["items"]
                if [i["item_id"] for i in now] != ids:
                    return time.perf_counter() - t
                time.sleep(0.005)
            return timeout_s

    with ThreadPoolExecutor(10) as pool:
        return list(pool.map(one, users))


def measure_rate(srv: Any, pop: Population, rate: float, args: argparse.Namespace) -> dict:
    """Offer one rate of the mix and return its row."""
    from rtrec.serving.loadgen import run_schedule

    plan = plan_rate(pop, rate=rate, duration_s=args.duration, seed=args.seed)
    tally, cpu = Tally(), TreeCpu(srv.pid)
    load_before, client_before = load_avg_1m(), time.process_time()
    cpu.start()
    done = run_schedule(
        srv.url,
        plan.request_for,
        rate=plan.total_rate,
        n=len(plan.requests),
        connections=args.connections,
        headers={"X-API-Key": KEY},
        on_response=tally,
    )
    cpu_s = cpu.seconds()
    client_s = time.process_time() - client_before
    row = rate_row(
        rate,
        done,
        args.duration,
        tally,
        cpu_s=cpu_s,
        load_before=load_before,
        load_after=load_avg_1m(),
    )
    row["client_cpu_s_per_request"] = round(client_s / len(done.samples), 6)
    return row


def warm_up(srv: Any, pop: Population, args: argparse.Namespace) -> None:
    """``--warmup`` seconds at 100 req/s, not measured. Its own seed: the warm-up's
    never-seen user ids are not the measured ones."""
    warm = argparse.Namespace(**{**vars(args), "duration": args.warmup, "seed": args.seed + 1})
    measure_rate(srv, pop, 100.0, warm)


def measure_floor(pop: Population, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """The same mix at 200 req/s against :class:`bench.serving_floor.Floor` (the same HTTP
    stack answering without work), after the same warm-up and 100 req/s."""
    from bench.serving_floor import floor_figures

    def measure(srv: Any, rate: float) -> dict[str, Any]:
        warm_up(srv, pop, args)
        measure_rate(srv, pop, 100.0, args)  # as the service: 100 req/s, then 200
        row = measure_rate(srv, pop, rate, args)
        print("floor (the HTTP stack without work):" + progress_line(row)[1:], flush=True)
        return row

    return floor_figures(measure, port=free_port(), log=log, rate=AT_RATE)


def progress_line(row: dict) -> str:
    rec, sim = row["recommend"], row["similar"]
    return (
        f"  {row['rate_rps']:g} req/s (+{sim['sent']} similar): recommend p50 {rec['p50_ms']} "
        f"p99 {rec['p99_ms']} p99.9 {rec['p999_ms']} max {rec['max_ms']} ms, server p99 "
        f"{rec['server_p99_ms']} ms; similar p99 {sim['p99_ms']} ms; errors {row['errors']} "
        f"{rec['statuses']} {sim['statuses']}; fallbacks {rec['fallbacks']} "
        f"(cold {rec['fallbacks_cold']}); cpu/req {row['cpu_s_per_request']} s; load "
        f"{row['load_avg_1m_before']} -> {row['load_avg_1m_after']}; client stalls "
        f"{row['client_stalls'] or 'none'}; slowest due at "
        f"{[s.get('due_utc') for s in rec.get('slowest', [])][:3]}"
    )


def measure_rates(srv: Any, pop: Population, rates: list[float], args: argparse.Namespace):
    """Warm up, then each rate in order; stop after a rate above 200 that did not hold
    at 10 ms (no higher rate could count for either max-rate figure)."""
    warm_up(srv, pop, args)
    rows = []
    for rate in rates:
        row = measure_rate(srv, pop, rate, args)
        rows.append(row)
        print(progress_line(row), flush=True)
        if not holds(row, 10.0) and rate > AT_RATE:
            break
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", default=None, help="a bundle directory, or 'demo'")
    ap.add_argument("--demo-work-dir", default=None, help="the demo's work dir (--bundle demo)")
    ap.add_argument("--items", type=int, default=1_000_000, help="synthetic catalog size")
    ap.add_argument("--dim", type=int, default=64, help="synthetic embedding size")
    ap.add_argument("--users", type=int, default=5000, help="synthetic model's users")
    ap.add_argument("--rates", default="100,200,300,400,500,600,800", help="/recommend req/s")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds at 100 req/s first")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--click-users", type=int, default=100)
    ap.add_argument("--seed", type=int, default=11, help="the mix and the histories")
    ap.add_argument("--workdir", default="/tmp/rtrec-bench-serving")
    ap.add_argument(
        "--gpu-large-items",
        type=int,
        default=10_000_000,
        help="where a GPU is present, also time GPU retrieval over this many items (0: skip)",
    )
    ap.add_argument(
        "--two-stage",
        action="store_true",
        help="serve the synthetic bundle with a synthetic ranker (a bundle that carries a "
        "ranker is always served with it)",
    )
    ap.add_argument("--ranker-trees", type=int, default=100, help="synthetic ranker's trees")
    ap.add_argument("--ranker-leaves", type=int, default=31, help="... leaves per tree")
    ap.add_argument("--ranker-neighbours", type=int, default=20, help="... item-item table")
    args = ap.parse_args(argv)
    args.rate_list = sorted(float(r) for r in args.rates.split(","))
    if AT_RATE not in args.rate_list:
        ap.error(f"--rates must include {AT_RATE:g}: the headline figures are read there")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; the figures as one dict."""
    from rtrec.serving.process import running_server
    from rtrec.training import ranker_declared
    from rtrec.training.artifacts import load_bundle

    from rtrec.app.stack import down, up

    bundle_dir = resolve_bundle(args)
    settings = fresh_stack_settings(Path(args.workdir) / "work")
    bundle = load_bundle(bundle_dir, use_gpu=False)
    # What the bundle says it is (synthetic_bundle marks its own), not how it was named.
    kind = "synthetic" if bundle.metadata.get("synthetic") else "trained"
    pop, click_users, histories = population(bundle, args.click_users, args.seed)
    out: dict[str, Any] = {
        "model": kind,
        "bundle": str(bundle_dir),
        "model_version": bundle.version or last_good_version(bundle_dir),
        "catalog_items": len(bundle.item_ids),
        "index": bundle.index.kind,
        "served_stages": 1 if ranker_declared(bundle.metadata) is None else 2,
        "seed": args.seed,
        "duration_s": args.duration,
        "warm_users": len(pop.warm_users),
        "history_len_p50": int(np.median([len(h) for h in histories.values()])),
        "history_len_max": max(len(h) for h in histories.values()),
    }
    print(f"model: {kind}, {bundle_dir}, {out['catalog_items']} items", flush=True)
    try:
        up(settings)
        from rtrec.features import apply

        apply(settings)
        seed_histories(settings, histories)
        print(
            "bare retrieval (the engine in process: no HTTP, no store read; same mix)...",
            flush=True,
        )
        mix = bare_plan(plan_rate(pop, rate=AT_RATE, duration_s=args.duration, seed=args.seed))
        bare = bare_retrieval(bundle, mix, histories, work_dir=Path(args.workdir) / "bare")
        out.update({k: round(v, 3) for k, v in bare.items()})
        print(f"  p50 {out['bare_p50_ms']} / p99 {out['bare_p99_ms']} ms", flush=True)
        print("ranker stage (in process, same mix, warm users)...", flush=True)
        ranked = ranker_stage(
            bundle,
            mix,
            histories,
            work_dir=Path(args.workdir) / "bare",
            trees=args.ranker_trees,
            leaves=args.ranker_leaves,
            neighbours=args.ranker_neighbours,
        )
        out.update({k: round(v, 3) if isinstance(v, float) else v for k, v in ranked.items()})
        print(
            f"  ranking {out['ranker_candidates_mean']:.0f} candidates: p50 "
            f"{out['ranker_rank_p50_ms']} / p99 {out['ranker_rank_p99_ms']} ms "
            f"({out['ranker_model']} ranker, {out['ranker_trees']} trees); sources + merge "
            f"p99 {out['ranker_sources_p99_ms']} ms; whole two-stage answer p99 "
            f"{out['two_stage_bare_p99_ms']} ms",
            flush=True,
        )
        gpu = gpu_figures(bundle.item_embeddings, dim=args.dim, large_items=args.gpu_large_items)
        out.update(gpu)
        del bundle
        gc.collect()  # then keep the client's own collector off the big heap it left
        gc.freeze()
        start_stream_processor(settings, "stream-bench")
        env = service_env(bundle_dir, KEY)
        log = settings.log_dir / "serving-bench.log"
        with running_server(free_port(), env=env, log=log, timeout=300) as srv:
            rows = measure_rates(srv, pop, args.rate_list, args)
            print(f"click-to-change over {len(click_users)} users...", flush=True)
            ctc = np.asarray(click_to_change(srv.url, click_users))
        floor = measure_floor(pop, args, settings.log_dir / "serving-floor.log")
    finally:
        down(settings)
    out.update(headline(rows, out["bare_p99_ms"]))
    out.update(floor)
    out["floor_overhead_ratio_p99"] = round(floor["floor_p99_ms_at200"] / out["bare_p99_ms"], 2)
    out["service_overhead_ratio_two_stage_p99"] = (
        round(out["p99_ms_at200"] / max(out["two_stage_bare_p99_ms"], 1e-9), 2)
        if out["served_stages"] == 2
        else None
    )
    out.update(
        click_to_change_p50_s=round(float(np.percentile(ctc, 50)), 3),
        click_to_change_p99_s=round(float(np.percentile(ctc, 99)), 3),
        click_to_change_timeouts=int((ctc >= 10.0).sum()),
        rates=rows,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    from rtrec.logging import configure_logging

    args = parse_args(argv)
    configure_logging("WARNING", json_lines=False)
    try:
        out = run(args)
    except MissingRate as exc:
        raise SystemExit(f"no figures at 200 req/s: {exc}") from exc
    gc.unfreeze()  # let interpreter teardown free everything (no leak notices after the JSON)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
