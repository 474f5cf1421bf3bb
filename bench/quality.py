"""Recommendation quality: the two-tower model and the two-stage recommender (candidate
sources + LightGBM ranker, rtrec.training.two_stage) vs MostPopular and EASE, full ranking.

    python bench/quality.py --data PATH/TO/ml-100k --protocol published
    python bench/quality.py --data synthetic --protocol temporal

published: random 75/25 split within each user (every rating a positive), all items
ranked, training items masked — the protocol of the published ML-100K table. The model
uses TrainConfig.published() (one example per user: the bag of its training items,
denoised, every one of them a positive, full softmax). Epochs, the popularity prior's
weight and EASE's L2 are chosen on a validation split carved from the training part; the
test part is touched once.
temporal: train on the past, test on the future (global time cut). As in the product
(rtrec.training.trainer.candidates / fit_best), both objectives are fitted, next_item with
TrainConfig() defaults and the user bag (TrainConfig.user_bag()), and the better on the
validation period is refitted on train + validation; ``--objective`` forces one. Model
flags left unset keep the protocol's defaults. The last line of output is one JSON object
of figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

KEYS = ("ndcg@10", "recall@10", "map@10", "precision@10")


def _inner_split(train: pd.DataFrame, frac: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random per-user holdout of ``frac`` of each user's training rows (for tuning only)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(len(train)) < frac
    return train[~mask].reset_index(drop=True), train[mask].reset_index(drop=True)


def _segments(rankings: dict, seen: pd.DataFrame) -> dict:
    """NDCG@10 and Recall@10 of every model on the test users without any event in
    ``seen`` (new: every model ranks them by popularity, so none may fall below
    MostPopular there) and on the others, with each segment's user count."""
    users = next(iter(rankings.values())).per_user.index  # the same users, same order, in each
    new = ~users.isin(seen["user_id"].astype(str).unique())
    out = {}
    for name, mask in (("new_users", new), ("returning_users", ~new)):
        seg: dict = {"users": int(mask.sum())}
        for model, r in rankings.items():
            rows = r.per_user[mask]
            mean = {k: round(float(rows[k].mean()), 4) for k in ("ndcg@10", "recall@10")}
            seg[model] = mean if len(rows) else None
        out[name] = seg
    return out


def _rounded(info: dict) -> dict:
    """Floats to 4 places, one level of dicts down; anything else as it is."""

    def r(x: object) -> object:
        return round(x, 4) if isinstance(x, float) else x

    return {
        k: {n: r(x) for n, x in v.items()} if isinstance(v, dict) else r(v) for k, v in info.items()
    }


def _two_stage(args, slices, final, first_model, final_model, fit_state, ease_l2):
    """Candidates + LightGBM ranker (rtrec.training.two_stage): the ranker learns from
    ``slices`` of the tuning part ((state, labels, cut); the first is the validation cut,
    its two-tower the tuned one, the others' fitted by ``fit_state`` with the chosen
    configuration), then the sources are refitted on the final state; the test part is
    only scored."""
    from rtrec.training.two_stage import Fold, fit_two_stage

    t = time.perf_counter()
    folds = [
        Fold(state, labels, first_model if j == 0 else fit_state(state), cut)
        for j, (state, labels, cut) in enumerate(slices)
    ]
    model, info = fit_two_stage(
        folds, final, final_model=final_model, ease_l2=ease_l2, seed=args.seed
    )
    info["fit_seconds"] = round(time.perf_counter() - t, 1)
    return model, info


def _slices(args, raw_fit, val, raw_train, cut):
    """The ranker's training slices: the validation cut first, then ``--ranker-folds`` - 1
    more (fresh random holdouts of the training part, or earlier time cuts)."""
    from rtrec.training.two_stage import random_slices, time_slices

    more = args.ranker_folds - 1
    if args.protocol == "published":
        extra = random_slices(raw_train, more, args.valid_frac, args.seed)
        return [(raw_fit, val, None), *[(s, lab, None) for s, lab in extra]]
    return [(raw_fit, val, cut), *time_slices(raw_fit, cut, len(val), more)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--data",
        default="synthetic",
        help="synthetic[:small], a MovieLens dir, or a saved data set",
    )
    ap.add_argument("--protocol", choices=("published", "temporal"), default="published")
    ap.add_argument(
        "--epochs", type=int, default=None, help="fixed epochs (default: chosen on validation)"
    )
    ap.add_argument(
        "--max-epochs", type=int, default=None, help="default: 200 (published), 30 (temporal)"
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--valid-frac",
        type=float,
        default=0.1,
        help="published: share of each user's training rows held out for tuning",
    )
    ap.add_argument(
        "--objective",
        choices=("next_item", "multinomial"),
        default=None,
        help="default: multinomial (published), next_item (temporal)",
    )
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument(
        "--history",
        type=int,
        default=None,
        help="history items (temporal: also the training set's)",
    )
    ap.add_argument(
        "--copies", type=int, default=2, help="history resamples (published, next_item)"
    )
    ap.add_argument(
        "--ranker-folds",
        type=int,
        default=3,
        help="slices of the tuning part the two-stage ranker learns from (the validation "
        "cut and earlier cuts / fresh holdouts; each fits one more two-tower)",
    )
    ap.add_argument("--no-log-q", action="store_true", help="disable the log-Q correction")
    ap.add_argument("--uniform-negatives", type=int, default=None, help="-1 = whole catalog")
    ap.add_argument("--history-dropout", type=float, default=None)
    ap.add_argument("--user-id-dropout", type=float, default=None)
    ap.add_argument("--weight-decay", type=float, default=None)
    ap.add_argument("--dropout", type=float, default=None)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other TrainConfig field (JSON value), repeatable",
    )
    args = ap.parse_args()

    from rtrec.training.baselines import fit_baselines
    from rtrec.training.dataset import SplitConfig, build_training_sets, stop_spark, write_event_log
    from rtrec.training.evaluate import metrics_table, rank
    from rtrec.training.examples import histories_bag
    from rtrec.training.trainer import TrainConfig, candidates, fit, fit_best, refit_config
    from rtrec.training.two_stage import recall_of_candidates

    from rtrec.config import load_settings
    from rtrec.data import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    work = Path(tempfile.mkdtemp(prefix="rtrec-quality-"))
    settings = load_settings(work_dir=work, seed=args.seed)
    log = write_event_log(ds, work / "offline")
    split = (
        SplitConfig.published(seed=args.seed)
        if args.protocol == "published"
        else SplitConfig(seed=args.seed, history_len=args.history or SplitConfig.history_len)
    )
    sets = build_training_sets(settings, source=log, config=split)
    stop_spark()
    train, test = sets.read("train"), sets.read("test")
    flags = {
        "dim": args.dim,
        "hidden": args.hidden,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "history_len": args.history,
        "uniform_negatives": args.uniform_negatives,
        "history_dropout": args.history_dropout,
        "user_id_dropout": args.user_id_dropout,
        "weight_decay": args.weight_decay,
        "dropout": args.dropout,
    }
    overrides = {k: v for k, v in flags.items() if v is not None} | {"seed": args.seed}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = json.loads(value)
    if args.no_log_q:
        overrides["log_q"] = False
    if args.objective:
        overrides["objective"] = args.objective
    if args.epochs or args.max_epochs:
        overrides["epochs"] = args.epochs or args.max_epochs
    forced = overrides.get("objective")
    if args.protocol == "published":
        if forced in (None, "multinomial"):
            cfg = TrainConfig.published(**overrides)
        else:
            cfg = TrainConfig(**{"history_len": 50, **overrides})
        configs = {cfg.objective: cfg}
    else:
        # next_item's tuning run is longer than its product default (validation picks the
        # epoch); the user bag keeps its preset's schedule. --objective forces one.
        next_item = TrainConfig(**{"history_len": split.history_len, "epochs": 30, **overrides})
        configs = {
            name: c
            for name, c in candidates("temporal", **overrides).items()
            if forced is None or c.objective == forced
        }
        if "next_item" in configs:
            configs["next_item"] = next_item
        cfg = next(iter(configs.values()))
    raw_train = train
    if args.protocol == "published":
        # Held-out ratings never feed a model input: histories come from training rows.
        fit_part, val = _inner_split(train, args.valid_frac, args.seed)
        raw_fit = fit_part
        seen_for_test = train
        if cfg.objective == "next_item":
            # Time order carries no signal under a random split: histories are bags of
            # the user's other training items, resampled ``copies`` times.
            h = cfg.history_len
            fit_part = histories_bag(fit_part, h, seed=args.seed, copies=args.copies)
            train = histories_bag(train, h, seed=args.seed + 1, copies=args.copies)
    else:
        val = sets.read("validation")
        fit_part = raw_fit = train
        seen_for_test = pd.concat([train, val], ignore_index=True)
    print(
        f"data ready in {time.perf_counter() - t0:.1f} s: "
        f"{len(train)} train, {len(test)} test rows",
        file=sys.stderr,
    )

    chosen, scores, tuned = cfg.objective, {}, None
    if args.epochs is None:
        chosen, tuned, scores = fit_best(fit_part, configs, validation=val, progress=False)
        # The product's refit (rtrec.training.pipeline): the chosen epoch and prior, no selection.
        cfg = refit_config(tuned)
        print(
            f"candidate chosen on validation: {chosen} (val ndcg@10 by candidate: {scores}); "
            f"epochs chosen on validation: {cfg.epochs}; popularity prior "
            f"{cfg.popularity_prior} (val ndcg@10 by weight: {tuned.prior_scores})",
            file=sys.stderr,
        )
    baselines = fit_baselines(fit_part, val)
    ease_l2 = baselines["EASE"].l2
    final_train = train if args.protocol == "published" else seen_for_test
    t1 = time.perf_counter()
    model = fit(final_train, replace(cfg, select_best=False, patience=None), progress=False)
    train_s = time.perf_counter() - t1
    finals = fit_baselines(final_train, None, ease_l2=ease_l2)
    rankings = {"two_tower": rank(model, seen_for_test, test)}
    rankings |= {name: rank(m, seen_for_test, test) for name, m in finals.items()}
    cut = sets.cut_ts[0] if args.protocol == "temporal" else None
    fixed = replace(cfg, select_best=False, patience=None)

    def fit_state(state: pd.DataFrame):
        """A two-tower on a ranker slice's state, prepared as the tuning part was."""
        if args.protocol == "published" and cfg.objective == "next_item":
            state = histories_bag(state, cfg.history_len, seed=args.seed, copies=args.copies)
        return fit(state, fixed, progress=False)

    two_stage = _two_stage(
        args,
        _slices(args, raw_fit, val, raw_train, cut),
        raw_train if args.protocol == "published" else seen_for_test,
        tuned or fit(fit_part, fixed, progress=False),
        model,
        fit_state,
        ease_l2,
    )
    rankings["two_stage"] = rank(two_stage[0], seen_for_test, test)
    results = {name: r.summary for name, r in rankings.items()}
    two_stage[1]["candidate_recall@200"] = recall_of_candidates(two_stage[0], seen_for_test, test)
    print(metrics_table(results))
    print(f"two-stage: {json.dumps(two_stage[1])}", file=sys.stderr)
    out = {
        "protocol": args.protocol,
        "data": args.data,
        **{k: round(results["two_tower"][k], 4) for k in KEYS},
        "recall@50": round(results["two_tower"]["recall@50"], 4),
        "coverage@10": round(results["two_tower"]["coverage@10"], 4),
        "baselines": {n: {k: round(results[n][k], 4) for k in KEYS} for n in finals},
        "two_stage": {k: round(results["two_stage"][k], 4) for k in KEYS}
        | {"recall@50": round(results["two_stage"]["recall@50"], 4)}
        | _rounded(two_stage[1]),
        "segments": _segments(rankings, seen_for_test),
        "epochs": cfg.epochs,
        "candidate": chosen,
        "candidate_val_ndcg@10": {k: round(v, 4) for k, v in scores.items()},
        "config": {k: v for k, v in cfg.to_dict().items() if k not in ("device", "threads")},
        "ease_l2": ease_l2,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
