"""How often the promotion gate decides right: seeds, clearly better, clearly worse.

    python bench/gate.py                       # synthetic:small, the product's split
    python bench/gate.py --data PATH --seeds 20 --better 10 --worse 10

The product's temporal split (train | validation | gate slice) and its selection
(``rtrec.training.trainer.fit_best`` on validation: objective, epochs, popularity prior) run
once; the chosen settings are refitted on train + validation, as the pipeline does, to make
the champion. Then, each judged on the gate slice with the same seen-item mask and decided
by the gate's own rule (``rtrec.training.gate.decide``, margin ``settings.training.gate_margin``):

(a) ``--seeds`` challengers with the champion's own settings and other seeds: any
    promotion is a false one (``false_promotion_rate``, target <= 0.05);
(b) ``--better`` challengers with those settings against a deliberately undertrained
    champion (one epoch of its schedule): each should be promoted
    (``true_promotion_rate``, target >= 0.9);
(c) ``--worse`` undertrained challengers against the real champion: none should be
    (``worse_promoted``, target 0).

Where the one champion falls among its seeds matters for (a): a champion from a lucky seed
is hard to beat by chance. ``false_promotion_rate_any_champion`` also takes every model of
(a) and the champion in turn as the champion, the others as challengers (all ordered
pairs), which does not depend on that draw.

The last line of output is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="synthetic:small", help="synthetic[:small] or a data path")
    ap.add_argument("--seeds", type=int, default=20, help="same-settings challengers")
    ap.add_argument("--better", type=int, default=10, help="challengers vs an undertrained one")
    ap.add_argument("--worse", type=int, default=10, help="undertrained challengers")
    ap.add_argument("--seed", type=int, default=42, help="the champion's seed")
    args = ap.parse_args()

    from rtrec.training.dataset import build_training_sets, stop_spark, write_event_log
    from rtrec.training.evaluate import rank
    from rtrec.training.gate import METRIC, GateRule, SliceInfo, UserScores, decide, gather_evidence
    from rtrec.training.pipeline import Frames, split_config
    from rtrec.training.trainer import candidates, fit, fit_best, refit_config

    from rtrec.config import load_settings
    from rtrec.data import load_dataset

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="rtrec-gate-"))
    settings = load_settings(work_dir=work, seed=args.seed)
    log = write_event_log(load_dataset(args.data), work / "offline")
    sets = build_training_sets(settings, source=log, config=split_config(settings, "temporal"))
    stop_spark()
    frames = Frames.read(sets)
    seen, gate = frames.fit_part, frames.gate
    span = sets.ts_range["gate"]
    rule = GateRule(
        margin=settings.training.gate_margin,
        confidence=settings.training.gate_confidence,
        samples=settings.training.gate_samples,
        seed=settings.seed,
    )
    margin = rule.margin

    chosen, tuned, scores = fit_best(
        frames.train,
        candidates("temporal", seed=args.seed),
        validation=frames.validation,
        progress=False,
    )
    base = refit_config(tuned)
    undertrained = replace(base, epochs=1)
    log_line(f"selected {chosen} on validation {scores}; refit config epochs {base.epochs}")

    def judged(cfg: Any, seed: int) -> UserScores:
        start = time.perf_counter()
        model = fit(seen, replace(cfg, seed=seed), progress=False)
        scores = UserScores.from_ranking(rank(model, seen, gate))
        log_line(
            f"  fitted seed {seed} ({cfg.epochs} epochs) in {time.perf_counter() - start:.1f} s: "
            f"gate {METRIC} {scores.values.mean():.4f}"
        )
        return scores

    def verdicts(champion: UserScores, challengers: list[UserScores]) -> list[dict[str, Any]]:
        info = SliceInfo("gate", len(gate), len(champion.values), span[0], span[1])
        out = []
        for chal in challengers:
            e = gather_evidence(info, chal, champion, champion_version="1", rule=rule)
            out.append(
                {
                    "promoted": decide(e, margin=margin).promoted,
                    "gain": round(e.gain or 0.0, 4),
                    "ci": [round(e.ci_low or 0.0, 4), round(e.ci_high or 0.0, 4)],
                }
            )
        return out

    log_line("champion (the chosen settings refitted on train + validation):")
    champion = judged(base, args.seed)
    log_line(f"(a) {args.seeds} challengers with the champion's settings, other seeds:")
    peers = [judged(base, 1000 + s) for s in range(args.seeds)]
    same = verdicts(champion, peers)
    pool = [champion, *peers]
    pairs = [
        v
        for i, champ in enumerate(pool)
        for v in verdicts(champ, [c for j, c in enumerate(pool) if j != i])
    ]
    log_line("(b) an undertrained champion, and challengers with the real settings:")
    weak = judged(undertrained, args.seed)
    better = verdicts(weak, [judged(base, 2000 + s) for s in range(args.better)])
    log_line("(c) undertrained challengers against the real champion:")
    worse = verdicts(champion, [judged(undertrained, 3000 + s) for s in range(args.worse)])

    def rate(rows: list[dict[str, Any]]) -> float:
        return sum(r["promoted"] for r in rows) / max(len(rows), 1)

    named = (("same settings", same), ("any pair", pairs), ("better", better), ("worse", worse))
    for name, rows in named:
        gains = [r["gain"] for r in rows]
        log_line(
            f"{name}: promoted {sum(r['promoted'] for r in rows)}/{len(rows)}; gains "
            f"{min(gains):+.2%} .. {max(gains):+.2%} (median {np.median(gains):+.2%})"
        )
    out = {
        "data": args.data,
        "gate_users": len(champion.values),
        "gate_rows": len(gate),
        "margin": margin,
        "rule": "gain >= margin and ci_low > -margin (paired bootstrap, users x items)",
        "candidate": chosen,
        "champion_gate_ndcg@10": round(float(champion.values.mean()), 4),
        "undertrained_gate_ndcg@10": round(float(weak.values.mean()), 4),
        "false_promotion_rate": round(rate(same), 4),
        "false_promotion_rate_any_champion": round(rate(pairs), 4),
        "same_settings_pairs": len(pairs),
        "same_settings_gate_ndcg@10": [round(float(x.values.mean()), 4) for x in pool],
        "true_promotion_rate": round(rate(better), 4),
        "worse_promoted": sum(r["promoted"] for r in worse),
        "same_settings": same,
        "better": better,
        "worse": worse,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out))


def log_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
