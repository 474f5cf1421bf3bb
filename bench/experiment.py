"""Online experiments decide right: A/A tests, a clearly better challenger, a broken split,
and what impression logging costs the service.

    python bench/experiment.py                          # synthetic:small, MDE 0.10
    python bench/experiment.py --aa 20 --ab 10 --mde 0.10 --threads 4

Everything is the product's own path on an embedded stack of the run's own (Tansu,
Redis, the MLflow registry, the stream processor, a BentoML service answering HTTP):

1. A synthetic data set (``synthetic:small``'s generator with ``--users`` users and
   ``--events`` events, seed ``--data-seed``) is trained by the real pipeline
   (``rtrec.training.train``, ``--epochs`` cap). The undertrained champion of (b) is, by
   default, that two-tower moved back toward a fresh initialisation: every trained
   parameter at ``init + progress * (trained - init)`` with ``--progress`` 0.5, the
   popularity prior kept, item vectors and an exact index rebuilt (``--champion
   partial``; :func:`bench.experiment_support.partly_trained_bundle`). Fewer epochs would
   not make a worse model: the selection keeps the epoch that scores best on validation,
   often the first. The alternatives: the same two-tower with its initial, untrained
   weights (``--champion untrained``: clicked 0.2 % of the time, so the horizon sized on
   the champion's rate is out of reach), or the pipeline on the first ``--weak-share`` of
   the time span (``--champion early``: with 20,000 users its 30,000 events trained a
   model whose click-through under the click model matched the full one's). How much
   better the challenger is shows in the arms' click-through (``ab_ctr``).
   Users get their last 20 events as online history.
2. Simulated users (:class:`rtrec.serving.simulator.SimulatedUsers`, ``--threads`` of
   them) know each user's true taste (:func:`rtrec.data.ground_truth`), ask
   ``/recommend`` and click each shown item with the position-based click model's
   probability (``--attraction``, ``--position-decay``), posting clicks to ``/feedback``
   with the answer's ``request_id``. Their requests pass ``exclude_seen: false``: the
   click model's taste does not tire of an item, and with the API's default the
   seen-item filter hid every item a user had clicked, so each of the run's many
   experiments on the same users started from a more depleted world (click-through fell
   from 0.33 to 0.05 over 13 A/A tests, and the sample sizes grew with it). The stream
   processor joins the clicks to the impressions;
   the readout (``rtrec.monitoring.experiment_status``) judges them.
3. Each experiment is a fresh registration set as ``challenger`` (``rtrec model
   challenge``), so it has its own experiment id and its own draw of the arms. Traffic
   runs until the readout leaves ``collecting`` (both arms at the sample size for
   ``--mde``, alpha 0.05, power 0.8); then traffic stops, the processor catches up with
   every answer and click sent, and the verdict read then is the decision: one look at a
   fixed horizon, as the decision DAG is meant to be run.

   (a) ``--aa`` A/A tests, the champion's own bundle as challenger: any winner is false
       (``aa_false_win_rate``, either side, target <= 0.05);
   (b) ``--ab`` tests of the trained bundle against the undertrained champion
       (``ab_true_win_rate``: ``challenger wins``, target >= 0.9;
       ``impressions_to_decision``: the median of both arms' impressions at the decision);
   (c) a broken split: the service splits 40 % of users to the challenger while the
       readout is configured for 50 % (``srm_detected``: the verdict is ``sample ratio
       mismatch``).
4. Impression overhead: the serving benchmark's model (``bench/serving.py``'s synthetic
   1M-item bundle, built once) behind three services, impressions off, on (sent by the
   default child process) and on (sent by the service's own thread), measured in turn
   ``--overhead-rounds`` times at 200 req/s of the serving benchmark's mix;
   ``impression_overhead_p99_ms`` is the median over rounds of p99 on minus p99 off
   (``..._thread`` the same for the thread). The impressions are produced to the broker
   and acknowledged; the stream processor is stopped first, as in the serving benchmark,
   since it is a downstream consumer that a deployment runs on its own machines. With
   ``--overhead-with-processor`` it keeps joining them on the same two cores, and its work
   is then part of what is measured.

The last line of output is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench._common import fresh_stack_settings, seed_histories, start_stream_processor
from bench.experiment_support import (
    Experimenter,
    impression_overhead,
    partly_trained_bundle,
    service_settings_env,
)

GATE = "ndcg@10"
PROCESSOR = "stream-experiment-bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--aa", type=int, default=20, help="A/A tests")
    ap.add_argument("--ab", type=int, default=10, help="tests of a clearly better challenger")
    ap.add_argument("--mde", type=float, default=0.10, help="monitoring.min_detectable_effect")
    ap.add_argument("--threads", type=int, default=4, help="simulated users in parallel")
    ap.add_argument("--epochs", type=int, default=10, help="epoch cap of every training run")
    ap.add_argument(
        "--champion",
        choices=["partial", "untrained", "early"],
        default="partial",
        help="the undertrained champion of (b): the trained weights moved back toward their "
        "initial ones (--progress), untrained weights, or trained on an early slice",
    )
    ap.add_argument("--progress", type=float, default=0.5, help="'partial': how far along (0 to 1)")
    ap.add_argument("--weak-share", type=float, default=0.1, help="time share of 'early'")
    ap.add_argument("--data-seed", type=int, default=42)
    ap.add_argument("--users", type=int, default=20_000, help="synthetic users")
    ap.add_argument("--events", type=int, default=300_000, help="synthetic events")

    ap.add_argument("--attraction", type=float, default=0.0015, help="click model attraction_scale")
    ap.add_argument("--position-decay", type=float, default=1.0, help="click model decay")
    ap.add_argument("--overhead-rounds", type=int, default=3, help="0: skip the overhead")
    ap.add_argument("--overhead-duration", type=float, default=20.0, help="seconds per turn")
    ap.add_argument(
        "--overhead-with-processor",
        action="store_true",
        help="keep the stream processor joining the impressions during the overhead phase",
    )
    ap.add_argument("--workdir", default="/tmp/rtrec-bench-experiment")
    return ap.parse_args(argv)


def train_models(
    settings: Any, ds: Any, work: Path, args: argparse.Namespace
) -> tuple[str, str, dict[str, float | None]]:
    """(trained, undertrained) versions; the first is the champion, and no challenger is
    left waiting. The trained one comes from the real pipeline; the undertrained one
    (``--champion``) is the same two-tower untrained (its initial weights, over the same
    catalog and users) or the pipeline on the first ``--weak-share`` of the time span."""
    from rtrec.serving.synthetic import synthetic_bundle
    from rtrec.training import ModelRegistry, train

    t = time.perf_counter()
    good = train(settings, data=ds.save(work / "data"), epochs=args.epochs, progress=False)
    registry = ModelRegistry(settings)
    if args.champion in ("partial", "untrained"):
        bundle = (
            partly_trained_bundle(
                good.fit.bundle_dir, work / "partial", progress=args.progress, seed=args.data_seed
            )
            if args.champion == "partial"
            else synthetic_bundle(
                work / "untrained", n_items=len(ds.items), n_users=args.users, seed=args.data_seed
            )
        )
        weak_version, weak_gate = registry.log_and_register(bundle, params={}, metrics={})[1], None
    else:
        ts = ds.events["ts"]
        cut = int(ts.min() + args.weak_share * (ts.max() - ts.min()))
        early = ds.time_slice(None, cut).save(work / "data-early")
        weak = train(settings, data=early, epochs=args.epochs, progress=False)
        weak_version, weak_gate = str(weak.version), round(weak.gate_value, 4)
    if registry.challenger_version() is not None:
        registry.archive_challenger(registry.challenger_version(), reason="bench: set up")
    log(
        f"trained v{good.version} (gate {good.gate_metric} {good.gate_value:.4f}) and "
        f"{args.champion} v{weak_version} (gate {weak_gate}) in {time.perf_counter() - t:.0f} s"
    )
    gate = {"trained": round(good.gate_value, 4), args.champion: weak_gate}
    return str(good.version), str(weak_version), gate


def histories(events: Any, n: int = 20) -> dict[str, list[str]]:
    """Each user's last ``n`` items, newest last, as the stream would have left them."""
    ordered = events.sort_values("ts").groupby("user_id")["item_id"]
    return {str(u): [str(i) for i in items.tail(n)] for u, items in ordered}


def rate(rows: list[dict[str, Any]], verdicts: set[str]) -> float:
    return round(sum(r["verdict"] in verdicts for r in rows) / max(len(rows), 1), 4)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rtrec.features import apply
    from rtrec.training import ModelRegistry
    from scipy.stats import kstest

    from rtrec.app.processes import stop_managed
    from rtrec.app.stack import down, up
    from rtrec.data import load_dataset
    from rtrec.data.ground_truth import ground_truth
    from rtrec.data.synthetic_config import SyntheticConfig

    t0 = time.perf_counter()
    work = Path(args.workdir)
    settings = fresh_stack_settings(work / "work")
    env = service_settings_env(settings, mde=args.mde)
    sizes = {"seed": args.data_seed, "n_users": args.users, "n_events": args.events}
    ds = load_dataset("synthetic:small", **sizes)
    truth = ground_truth(SyntheticConfig.small(**sizes))

    out: dict[str, Any] = {
        "data": f"synthetic:small generator, {args.users} users, {args.events} events, "
        f"seed {args.data_seed}",
        "simulated_users": int(ds.events["user_id"].nunique()),
        "exclude_seen": False,
        "mde": args.mde,
        "champion": {"kind": args.champion, "progress": args.progress}
        if args.champion == "partial"
        else {"kind": args.champion},
    }
    try:
        up(settings)
        apply(settings)
        good, weak, out[f"gate_{GATE}"] = train_models(settings, ds, work, args)
        users = histories(ds.events)
        names = list(users)
        seed_histories(settings, users)
        start_stream_processor(settings, PROCESSOR)
        registry = ModelRegistry(settings)
        bundle = registry.download_bundle(good)
        lab = Experimenter(settings, truth, args, env=env)
        with lab.service(share=0.5, name="ab"):
            log(f"(a) {args.aa} A/A tests: champion v{good} against its own bundle")
            aa = [lab.experiment(bundle, label=f"aa-{n}", users=names) for n in range(args.aa)]
            registry.promote(weak, reason="bench: an undertrained champion")
            log(f"(b) {args.ab} tests of the trained bundle against undertrained v{weak}")
            ab = [lab.experiment(bundle, label=f"ab-{n}", users=names) for n in range(args.ab)]
        with lab.service(share=0.4, name="srm"):
            log("(c) the service splits 40 % to the challenger; the readout expects 50 %")
            srm = lab.experiment(bundle, label="srm", users=names)
        if not args.overhead_with_processor:  # the serving bench's setting: no processor
            stop_managed(settings, PROCESSOR)
        out["overhead"] = impression_overhead(settings, args) if args.overhead_rounds > 0 else None
        if out["overhead"] is not None:
            out["overhead"]["stream_processor"] = (
                "joining on the same cores" if args.overhead_with_processor else "stopped"
            )
    finally:
        down(settings)
    decided = [r["impressions"] for r in ab if r["verdict"] == "challenger wins"]
    out.update(
        aa_false_win_rate=rate(aa, {"challenger wins", "champion wins"}),
        # A valid test's A/A p-values are uniform: the rate above is a count of 20, which a
        # test at exactly 5 % exceeds 26 % of the time; the whole distribution says more.
        aa_p_values=[r["p_value"] for r in aa],
        aa_p_uniform_ks_p=round(float(kstest([r["p_value"] for r in aa], "uniform").pvalue), 4)
        if aa
        else None,
        aa_verdicts={v: sum(r["verdict"] == v for r in aa) for v in {r["verdict"] for r in aa}},
        ab_true_win_rate=rate(ab, {"challenger wins"}),
        ab_ctr={
            arm: round(float(np.mean([r["ctr"][arm] for r in ab])), 4) if ab else None
            for arm in ("champion", "challenger")
        },
        impressions_to_decision=int(np.median(decided)) if decided else None,
        srm_detected=srm["verdict"] == "sample ratio mismatch",
        impression_overhead_p99_ms=(out["overhead"] or {}).get("impression_overhead_p99_ms"),
        click_model={"attraction_scale": args.attraction, "position_decay": args.position_decay},
        threads=args.threads,
        aa=aa,
        ab=ab,
        srm=srm,
        total_seconds=round(time.perf_counter() - t0, 1),
    )
    return out


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def main(argv: list[str] | None = None) -> None:
    from rtrec.logging import configure_logging

    args = parse_args(argv)
    configure_logging("WARNING", json_lines=False)
    # A terminated run still stops its stack (run's finally), as an interrupted one does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = run(args)
    headline = {
        k: out[k]
        for k in (
            "aa_false_win_rate",
            "ab_true_win_rate",
            "impressions_to_decision",
            "srm_detected",
            "impression_overhead_p99_ms",
        )
    }
    log(f"figures: {headline}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
