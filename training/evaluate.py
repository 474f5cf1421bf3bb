"""Full-ranking evaluation: every catalog item ranked, each user's seen items masked.

Metrics follow Microsoft Recommenders' ``python_evaluation`` with binary relevance so
figures compare with the published ML-100K tables:
precision@k = hits/k; recall@k = hits/|relevant|; NDCG@k = DCG/IDCG with 1/log2(rank+1)
gains; MAP@k = sum of precision at each hit rank / |relevant| (the definition behind the
published MAP column). Averages are over users with at least one relevant item.
Catalog coverage = distinct items in anyone's top 10 / catalog size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

KS = (10, 20, 50)
CHUNK = 1024


class Scorer(Protocol):
    item_ids: list[str]

    def score(self, seen: pd.DataFrame, user_ids: list[str]) -> np.ndarray: ...


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


@dataclass(frozen=True)
class Ranking:
    """One full ranking of ``target``'s users: the averages, one row per user, and every
    hit in a top 10 with its share of that user's NDCG@10."""

    summary: dict[str, float]
    per_user: pd.DataFrame
    """Index: user id (users with at least one relevant item, sorted: which users appear
    depends on ``seen`` and ``target`` only, so two models' frames align row for row);
    one column per metric."""
    hits: pd.DataFrame
    """``user_id``, ``item_id``, ``ndcg``: a user's NDCG@10 is the sum of its rows. What
    the gate's two-way bootstrap reweights by item."""


def per_user_metrics(
    model: Scorer, seen: pd.DataFrame, target: pd.DataFrame, *, ks: Sequence[int] = KS
) -> pd.DataFrame:
    """:attr:`Ranking.per_user` alone."""
    return rank(model, seen, target, ks=ks).per_user


def evaluate(
    model: Scorer, seen: pd.DataFrame, target: pd.DataFrame, *, ks: Sequence[int] = KS
) -> dict[str, float]:
    """Metrics of ``model`` on ``target`` interactions, masking each user's ``seen`` items."""
    return rank(model, seen, target, ks=ks).summary


def rank(
    model: Scorer, seen: pd.DataFrame, target: pd.DataFrame, *, ks: Sequence[int] = KS
) -> Ranking:
    """Averages, per-user metrics and hits from one ranking of the catalog."""
    users, table, recommended, hits = _rank(model, seen, target, ks)
    out = {k: float(v.mean()) if len(users) else 0.0 for k, v in table.items()}
    out["coverage@10"] = len(recommended) / max(len(model.item_ids), 1)
    out["users"] = float(len(users))
    per_user = pd.DataFrame(table, index=pd.Index(users, name="user_id"))
    hit_frame = pd.DataFrame(hits, columns=["user_id", "item_id", "ndcg"])
    return Ranking(out, per_user, hit_frame)


def _rank(
    model: Scorer, seen: pd.DataFrame, target: pd.DataFrame, ks: Sequence[int]
) -> tuple[list[str], dict[str, np.ndarray], set[int], list[tuple[str, str, float]]]:
    """Rank the catalog for every user with a relevant item: per-user metric arrays (in
    sorted user order), the set of items anyone got in a top 10, and the top-10 hits."""
    catalog = {item: j for j, item in enumerate(model.item_ids)}
    target = target[["user_id", "item_id"]].astype(str).drop_duplicates()
    seen_pairs = seen[["user_id", "item_id"]].astype(str)
    # An item the user already saw is not a relevant future item (masked in ranking).
    seen_keys = set(zip(seen_pairs["user_id"], seen_pairs["item_id"], strict=True))
    relevant: dict[str, set[int | str]] = {}
    for u, i in zip(target["user_id"], target["item_id"], strict=True):
        if (u, i) not in seen_keys:
            relevant.setdefault(u, set()).add(catalog.get(i, f"?{i}"))
    users = sorted(relevant)
    seen_idx: dict[str, list[int]] = {}
    for u, i in zip(seen_pairs["user_id"], seen_pairs["item_id"], strict=True):
        j = catalog.get(i)
        if j is not None:
            seen_idx.setdefault(u, []).append(j)
    kmax = max(ks)
    names = [f"recall@{k}" for k in ks] + ["precision@10", "ndcg@10", "map@10"]
    table = {name: np.zeros(len(users)) for name in names}
    recommended: set[int] = set()
    hit_rows: list[tuple[str, str, float]] = []
    ids = model.item_ids
    log_disc = 1.0 / np.log2(np.arange(2, kmax + 2))
    for start in range(0, len(users), CHUNK):
        chunk = users[start : start + CHUNK]
        scores = np.asarray(model.score(seen, chunk), dtype=np.float32)
        for r, u in enumerate(chunk):
            if u in seen_idx:
                scores[r, seen_idx[u]] = -np.inf
        top = _top_k(scores, kmax)
        for r, u in enumerate(chunk):
            row = start + r
            rel = relevant[u]
            hits = np.fromiter((j in rel for j in top[r]), dtype=bool, count=top.shape[1])
            recommended.update(top[r, :10].tolist())
            n_rel = len(rel)
            for k in ks:
                table[f"recall@{k}"][row] = hits[:k].sum() / n_rel
            h10 = hits[:10]
            table["precision@10"][row] = h10.sum() / 10
            dcg = float((h10 * log_disc[: len(h10)]).sum())
            idcg = float(log_disc[: min(n_rel, 10)].sum())
            table["ndcg@10"][row] = dcg / idcg
            ranks = np.flatnonzero(h10) + 1
            hit_rows.extend((u, ids[top[r, p - 1]], log_disc[p - 1] / idcg) for p in ranks)
            table["map@10"][row] = float((np.arange(1, len(ranks) + 1) / ranks).sum()) / n_rel
    return users, table, recommended, hit_rows


def choose_on_validation(
    model: Scorer,
    apply: Callable[[float], object],
    grid: Sequence[float],
    seen: pd.DataFrame,
    target: pd.DataFrame,
) -> tuple[float, dict[float, float]]:
    """Set each ``grid`` value with ``apply``, keep the best NDCG@10 on ``target`` (the
    first on ties) and leave it applied; returns it and the score of every value.
    ``apply`` runs again only when the best is not the value applied last (an apply can
    be a matrix inversion)."""
    scores = {}
    for value in grid:
        apply(value)
        scores[value] = evaluate(model, seen, target)["ndcg@10"]
    best = max(scores, key=scores.__getitem__)
    if best != grid[-1]:
        apply(best)
    return best, scores


METRIC_ORDER = (
    "ndcg@10",
    "recall@10",
    "recall@20",
    "recall@50",
    "map@10",
    "precision@10",
    "coverage@10",
)


def metrics_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per model, one column per metric."""
    head = "| model | " + " | ".join(METRIC_ORDER) + " |"
    sep = "|---" * (len(METRIC_ORDER) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in METRIC_ORDER) + " |"
        for name, m in results.items()
    ]
    return "\n".join([head, sep, *rows])


def write_report(
    results: dict[str, dict[str, float]], path: Path, *, title: str = ""
) -> tuple[Path, Path]:
    """Write ``<path>.md`` (table) and ``<path>.png`` (bar chart); returns both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    md = path.with_suffix(".md")
    md.write_text(f"# Evaluation {title}\n\n{metrics_table(results)}\n")
    metrics = [m for m in METRIC_ORDER if m != "coverage@10"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(len(results), 1)
    x = np.arange(len(metrics))
    for n, (name, m) in enumerate(results.items()):
        ax.bar(x + n * width, [m.get(k, 0.0) for k in metrics], width, label=name)
    ax.set_xticks(x + width * (len(results) - 1) / 2, metrics)
    ax.set_title(f"Full-ranking metrics {title}".strip())
    ax.legend()
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return md, png


def summary(results: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {name: {k: round(v, 4) for k, v in m.items()} for name, m in results.items()}
