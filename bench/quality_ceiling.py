"""How far blends of strong scorers reach on the published protocol: a diagnosis of the
two-stage system's ceiling there, not a result.

    python bench/quality_ceiling.py --data PATH/TO/ml-100k [--seed 7]

On the random 75/25 split the two-stage ranker adds little to its starting point, a blend
of the two-tower and EASE scores (``bench/quality.py``). This script asks whether other
well-known scorers would carry a blend further. Each scorer ranks the whole catalog
(training items masked), its scores standardised per user; blends are weighted sums of
those. The weights are chosen twice:

- on the validation cut (each user's training rows, a tenth held out, as ``quality.py``
  carves it): what a product could ship;
- on the test part itself (``oracle``): the most any blend on the grid reaches here. It is
  an upper bound for diagnosis only, never a figure of the product.

Scorers: the two-tower model as ``quality.py`` fits it (epochs and popularity prior chosen
on validation, refitted on the whole training part), EASE (L2 chosen on validation),
RP3beta (Paudel et al. 2017; alpha 1, beta 0.5), user-kNN (cosine, 50 neighbours), DLAE
(Steck 2020, dropout-emphasised ridge; p 0.5, L2 100). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

TT_WEIGHTS = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)
"""The two-tower's weight against EASE's in every blend."""
THIRD_WEIGHTS = (0.15, 0.3)
"""Weights tried for a third scorer added to the pair."""
SCORERS = ("two_tower", "EASE", "RP3beta", "user_knn", "DLAE")


class Matrix:
    """Precomputed scores behind the evaluator's interface."""

    def __init__(self, item_ids: list[str], users: list[str], scores: np.ndarray) -> None:
        self.item_ids = item_ids
        self._row = {u: j for j, u in enumerate(users)}
        self._scores = scores

    def score(self, seen: pd.DataFrame, user_ids: list[str]) -> np.ndarray:
        return self._scores[[self._row[u] for u in user_ids]]


def interactions(seen: pd.DataFrame, rows: list[str], items: list[str]) -> np.ndarray:
    """Binary ``rows`` x ``items`` matrix of ``seen``."""
    r = pd.Index(rows).get_indexer(seen["user_id"].astype(str))
    c = pd.Index(items).get_indexer(seen["item_id"].astype(str))
    x = np.zeros((len(rows), len(items)), dtype=np.float64)
    ok = (r >= 0) & (c >= 0)
    x[r[ok], c[ok]] = 1.0
    return x


def standardised(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-user z-scores over the unseen items; seen ones far below."""
    m = np.where(mask, np.nan, scores)
    z = (m - np.nanmean(m, 1, keepdims=True)) / np.nanstd(m, 1, keepdims=True)
    return np.nan_to_num(z, nan=-10.0)


def rp3beta(x_all: np.ndarray, x_users: np.ndarray, beta: float = 0.5) -> np.ndarray:
    """Random-walk item-item weights, damped by the target's popularity."""
    p_ui = x_all / np.maximum(x_all.sum(1, keepdims=True), 1)
    p_iu = (x_all / np.maximum(x_all.sum(0, keepdims=True), 1)).T
    w = (p_iu @ p_ui) / np.maximum(x_all.sum(0), 1)[None, :] ** beta
    np.fill_diagonal(w, 0.0)
    return x_users @ w


def user_knn(x_all: np.ndarray, x_users: np.ndarray, rows: np.ndarray, k: int = 50) -> np.ndarray:
    """Cosine user-user neighbours' items (``rows``: each user's own row of ``x_all``, -1
    for none, left out of its neighbours)."""
    norm_all = np.sqrt(np.maximum(x_all.sum(1), 1))
    norm_u = np.sqrt(np.maximum(x_users.sum(1), 1))
    s = (x_users @ x_all.T) / np.outer(norm_u, norm_all)
    own = np.flatnonzero(rows >= 0)
    s[own, rows[own]] = 0.0
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1][:, None]  # the k-th best
    return np.where(s >= kth, s, 0.0) @ x_all


def dlae(x_all: np.ndarray, x_users: np.ndarray, p: float = 0.5, l2: float = 100.0) -> np.ndarray:
    """Denoising linear autoencoder in closed form: B = (G + L)^-1 G."""
    g = x_all.T @ x_all
    lam = np.diag(p / (1 - p) * np.diag(g) + l2)
    return x_users @ np.linalg.solve(g + lam, g)


def scorers(seen, users, items, tt_scores, ease) -> dict[str, np.ndarray]:
    """Every scorer's standardised scores of ``users`` x ``items``."""
    mask = interactions(seen, users, items) > 0
    train_users = sorted(seen["user_id"].astype(str).unique())
    x_all = interactions(seen, train_users, items)
    x_users = mask.astype(np.float64)
    e_scores = ease.score(seen, users)
    e = np.full((len(users), len(items)), np.nan)
    pos = pd.Index(ease.item_ids).get_indexer(items)
    e[:, pos >= 0] = e_scores[:, pos[pos >= 0]]
    raw = {
        "two_tower": tt_scores,
        "EASE": np.nan_to_num(e, nan=-1e9),
        "RP3beta": rp3beta(x_all, x_users),
        "user_knn": user_knn(x_all, x_users, pd.Index(train_users).get_indexer(users)),
        "DLAE": dlae(x_all, x_users),
    }
    return {name: standardised(s, mask) for name, s in raw.items()}


def blends(z: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every scorer alone, then two-tower + EASE on the weight grid, each with and without
    a third scorer."""
    out = dict(z)
    others = [n for n in z if n not in ("two_tower", "EASE")]
    for w in TT_WEIGHTS:
        pair = w * z["two_tower"] + (1 - w) * z["EASE"]
        out[f"tt{w}+EASE"] = pair
        for name, v in itertools.product(others, THIRD_WEIGHTS):
            out[f"tt{w}+EASE+{v}{name}"] = (1 - v) * pair + v * z[name]
    return out


def measure(seen, target, users, items, tt_scores, ease) -> dict[str, tuple[float, float]]:
    from rtrec.training.evaluate import evaluate

    out = {}
    for name, s in blends(scorers(seen, users, items, tt_scores, ease)).items():
        r = evaluate(Matrix(items, users, s), seen, target)
        out[name] = (round(r["ndcg@10"], 4), round(r["recall@10"], 4))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, help="a MovieLens directory")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    from quality import _inner_split
    from rtrec.training.baselines import fit_baselines
    from rtrec.training.dataset import SplitConfig, build_training_sets, stop_spark, write_event_log
    from rtrec.training.trainer import TrainConfig, fit, fit_best, refit_config

    from rtrec.config import load_settings
    from rtrec.data import load_dataset

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="rtrec-ceiling-"))
    log = write_event_log(load_dataset(args.data), work / "offline")
    settings = load_settings(work_dir=work, seed=args.seed)
    sets = build_training_sets(settings, source=log, config=SplitConfig.published(seed=args.seed))
    stop_spark()
    train, test = sets.read("train"), sets.read("test")
    fit_part, val = _inner_split(train, 0.1, args.seed)
    cfg = TrainConfig.published(seed=args.seed)
    _, tuned, _ = fit_best(fit_part, {cfg.objective: cfg}, validation=val, progress=False)
    final = fit(
        train, replace(refit_config(tuned), select_best=False, patience=None), progress=False
    )
    ease_val = fit_baselines(fit_part, val)["EASE"]
    ease_test = fit_baselines(train, None, ease_l2=ease_val.l2)["EASE"]
    got = {}
    for part, seen, target, model, ease in (
        ("validation", fit_part, val, tuned, ease_val),
        ("test", train, test, final, ease_test),
    ):
        users = sorted(target["user_id"].astype(str).unique())
        items = list(model.item_ids)
        got[part] = measure(seen, target, users, items, model.score(seen, users), ease)
    chosen = max(got["validation"], key=lambda n: got["validation"][n][0])
    oracle = max(got["test"], key=lambda n: got["test"][n][0])
    for name in got["test"]:
        v, t = got["validation"][name], got["test"][name]
        print(f"{name:36s} validation {v[0]:.4f} {v[1]:.4f}   test {t[0]:.4f} {t[1]:.4f}")
    out = {
        "data": args.data,
        "seed": args.seed,
        "ease_l2": ease_val.l2,
        "single": {
            n: dict(zip(("ndcg@10", "recall@10"), got["test"][n], strict=True)) for n in SCORERS
        },
        "validation_chosen": {
            "blend": chosen,
            "ndcg@10": got["test"][chosen][0],
            "recall@10": got["test"][chosen][1],
        },
        "oracle_ndcg@10": {
            "blend": oracle,
            "ndcg@10": got["test"][oracle][0],
            "recall@10": got["test"][oracle][1],
        },
        "oracle_recall@10": max(t[1] for t in got["test"].values()),
        "blends": len(got["test"]),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
